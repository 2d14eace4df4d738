"""Routing end to end: a ``magickbox serve`` node receives studies from dcmtk ``storescu``,
runs process buckets, and routes the results (routing.json) as durable sends to real
peers — Orthanc (its REST API tells what it holds) and dcmtk ``storescp``."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from dicom_helpers import MAGICKBOX, MagickboxProcess, OrthancPeer, StorescpPeer, make_study, process_bucket, storescu
from pydicom.uid import generate_uid

from magickbox.layout import DataLayout
from magickbox.results.error_report import ENCAPSULATED_PDF
from stability_collector.localgraphite import free_port, wait_for_port

COPY_SCRIPT = """echo "copying"
cp -r "$1"/. "$2"/
echo '[{"success": "success", "message": "copied"}]' > "$2/proc.json"
"""
FAIL_SCRIPT = """echo "looking for a T1 series"
echo "ERROR: no T1-weighted series found"
echo '[{"success": "failed", "message": "no T1"}]' > "$2/proc.json"
"""
NO_OUTPUT_SCRIPT = """echo '[{"success": "success", "message": "nothing to write"}]' > "$2/proc.json"
"""


def dest(port: int, called: str, **extra: object) -> dict:
    return {"IP": "127.0.0.1", "PORT": str(port), "AETitleSender": "HOPS", "AETitleTo": called, **extra}


def uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def wait_until(what: str, check, timeout: float = 60, node: MagickboxProcess | None = None):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: last {value!r}\n" + (node.log()[-4000:] if node else ""))


def routing_of(node: MagickboxProcess, job_id: int) -> list[dict]:
    return node.api(f"/api/jobs/{job_id}")["routing"]


def job_for(node: MagickboxProcess, bucket: str) -> dict:
    return wait_until(f"a final job of {bucket}", lambda: next(
        (j for j in node.jobs() if j["bucket_ae"] == bucket and j["status"] not in ("queued", "running")), None),
        node=node)


def routed(node: MagickboxProcess, job_id: int, states=("sent", "failed", "skipped")) -> list[dict]:
    return wait_until(f"routing of job {job_id} to settle", lambda: (
        r if (r := routing_of(node, job_id)) and all(x["state"] in states for x in r) else None), node=node)


class SlowStorescp(StorescpPeer):
    """storescp that sleeps ``delay`` seconds in every C-STORE and keeps every copy it
    receives under its own file name (``+uf``), so an instance stored twice shows."""

    def __init__(self, out: Path, ae_title: str = "SLOW", delay: int = 1, port: int | None = None):
        super().__init__(out, ae_title)
        self.delay = delay
        if port:
            self.port = port

    def start(self) -> "SlowStorescp":
        self.out.mkdir(parents=True, exist_ok=True)
        args = ["/usr/bin/storescp", "+xa", "+uf", "-aet", self.ae_title, "-od", str(self.out)]
        if self.delay:
            args += ["--sleep-during", str(self.delay)]
        self.proc = subprocess.Popen([*args, str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, TCP_NODELAY="1"))
        wait_for_port(self.port, proc=self.proc, what="storescp")
        return self

    def received(self) -> list[str]:
        """SOP Instance UID of every file received, duplicates included."""
        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in self.out.iterdir() if p.is_file()]


@pytest.fixture
def orthanc(tmp_path):
    with OrthancPeer(tmp_path / "orthanc") as peer:
        yield peer


def test_outputs_reach_the_destination_chosen_by_ae_title_success_and_which(tmp_path, orthanc):
    """ProcCopy (success) -> Orthanc gets only the T1 series ('which'); ProcFail (failed)
    -> storescp gets the error report as Encapsulated PDF in the same study, Orthanc
    nothing; ProcInput with RouteDirectory INPUT -> storescp gets the input.  Disabled
    rules (status 0, enabled F) send nothing.  An invalid routing.json written while the
    node runs is refused (rule and key named) and the previous rules stay active."""
    buckets = tmp_path / "node" / "buckets"
    process_bucket(buckets, "ProcCopy", COPY_SCRIPT)
    process_bucket(buckets, "ProcFail", FAIL_SCRIPT)
    process_bucket(buckets, "ProcInput", NO_OUTPUT_SCRIPT)
    data = tmp_path / "node"
    data.mkdir(exist_ok=True)
    with StorescpPeer(tmp_path / "pacs", "PACS") as pacs:
        rules = {"routing": [
            {"name": "results", "AETitleIn": "ProcCopy", "AETitleFrom": "SCANNER",
             "send": [{"success": dest(orthanc.dicom_port, "ORTHANC", which=[{"0008,103e": "T1.*"}]),
                       "failed": dest(pacs.port, "PACS")}]},
            {"name": "failures", "AETitleIn": "ProcFail", "sendErrorAsDcm": 1,
             "send": [{"success": dest(orthanc.dicom_port, "ORTHANC"), "failed": dest(pacs.port, "PACS")}]},
            {"name": "input", "AETitleIn": "ProcInput", "RouteDirectory": "INPUT",
             "send": [{".*": dest(pacs.port, "PACS")}]},
            {"name": "off", "AETitleIn": ".*", "status": 0, "send": [{".*": dest(orthanc.dicom_port, "ORTHANC")}]},
            {"name": "off too", "AETitleIn": ".*", "enabled": "F", "send": [{".*": dest(orthanc.dicom_port, "ORTHANC")}]},
        ]}
        (data / "routing.json").write_text(json.dumps(rules))
        node = MagickboxProcess(data, quiet_seconds=1.0).start()
        try:
            # a broken file while running: refused, named, the rules above stay active
            broken = json.loads(json.dumps(rules))
            broken["routing"][1]["send"][0]["failed"]["PORT"] = "not-a-port"
            time.sleep(0.05)
            (data / "routing.json").write_text(json.dumps(broken))
            wait_until("the reload error", lambda: "previous rules stay active" in node.log(), node=node)
            error_line = next(line for line in node.log().splitlines() if "previous rules stay active" in line)
            assert "rule 1 ('failures')" in error_line and "'PORT'" in error_line

            study = generate_uid()
            t1 = make_study(tmp_path / "s1" / "t1", 3, study_uid=study, SeriesDescription="T1 MPRAGE")
            t2 = make_study(tmp_path / "s1" / "t2", 2, study_uid=study, SeriesDescription="T2 FLAIR")
            storescu(node.dicom_port, "ProcCopy", t1 + t2)
            failing = make_study(tmp_path / "s2", 2, PatientID="FAIL-42")
            storescu(node.dicom_port, "ProcFail", failing)
            inputs = make_study(tmp_path / "s3", 3)
            storescu(node.dicom_port, "ProcInput", inputs)

            copy_job, fail_job, input_job = (job_for(node, b) for b in ("ProcCopy", "ProcFail", "ProcInput"))
            assert (copy_job["status"], fail_job["status"], input_job["status"]) == ("success", "failed", "success")
            copy_routing = routed(node, copy_job["id"])
            assert [(r["destination"], r["state"], r["files"], r["sent"]) for r in copy_routing] == [
                (f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "sent", 3, 3)]
            fail_routing = routed(node, fail_job["id"])
            assert [(r["destination"], r["state"], r["sent"]) for r in fail_routing] == [
                (f"PACS@127.0.0.1:{pacs.port}", "sent", 1)]
            input_routing = routed(node, input_job["id"])
            assert [(r["directory"], r["state"], r["sent"]) for r in input_routing] == [("INPUT", "sent", 3)]

            assert orthanc.received_uids() == uids(t1)          # T1 only; nothing from the disabled rules
            received = {p: pydicom.dcmread(p) for p in (tmp_path / "pacs").iterdir()}
            assert {str(ds.SOPInstanceUID) for ds in received.values()} - uids(inputs) != set()
            reports = [ds for ds in received.values() if ds.SOPClassUID == ENCAPSULATED_PDF]
            assert len(reports) == 1
            report = reports[0]
            source = pydicom.dcmread(failing[0])
            assert (report.StudyInstanceUID, report.PatientID) == (source.StudyInstanceUID, "FAIL-42")
            pdf = bytes(report.EncapsulatedDocument)
            assert pdf.startswith(b"%PDF-") and b"ERROR: no T1-weighted series found" in pdf
            assert {str(ds.SOPInstanceUID) for ds in received.values()} == uids(inputs) | {str(report.SOPInstanceUID)}
            # the routing log of the job says what fired and why
            log = (data / "jobs" / str(copy_job["id"]) / "routing.log").read_text()
            assert "rule 3 ('off'): not applied: disabled" in log and "rule 1 ('failures'): not applied" in log
            assert "3 sent now" in log
            # the CLI shows the same
            out = subprocess.run([MAGICKBOX, "route", "status", str(copy_job["id"]), "--data-dir", str(data)],
                                 capture_output=True, text=True, check=True).stdout
            assert f"ORTHANC@127.0.0.1:{orthanc.dicom_port}: sent, 3/3 sent" in out
        finally:
            node.stop()


def test_fail_over_and_retry_until_the_destination_comes_back(tmp_path):
    """Primary down: after its retries the fail-over destination receives everything.
    Every destination down: the send is retried with back-off, the job record shows the
    failure, and once the destination is up the retry delivers."""
    buckets = tmp_path / "node" / "buckets"
    process_bucket(buckets, "ProcCopy", COPY_SCRIPT)
    process_bucket(buckets, "ProcLate", COPY_SCRIPT)
    data = tmp_path / "node"
    data.mkdir(exist_ok=True)
    dead_port, late_port = free_port(), free_port()
    with StorescpPeer(tmp_path / "backup", "BACKUP") as backup:
        (data / "routing.json").write_text(json.dumps({"routing": [
            {"AETitleIn": "ProcCopy", "send": [
                {"success": dest(dead_port, "PRIMARY", **{"break": 1, "retry": {"count": 1, "backoff": 0.2}})},
                {"success": dest(backup.port, "BACKUP", **{"break": 1})},
                {"success": dest(dead_port, "NEVER")}]},
            {"AETitleIn": "ProcLate", "send": [
                {".*": dest(late_port, "LATE", retry={"count": 20, "backoff": 0.5})}]},
        ]}))
        node = MagickboxProcess(data, quiet_seconds=1.0).start()
        late = SlowStorescp(tmp_path / "late", "LATE", delay=0, port=late_port)
        try:
            first = make_study(tmp_path / "s1", 4)
            storescu(node.dicom_port, "ProcCopy", first)
            second = make_study(tmp_path / "s2", 3)
            storescu(node.dicom_port, "ProcLate", second)
            copy_job = job_for(node, "ProcCopy")
            chain = routed(node, copy_job["id"])
            assert [(r["destination"].split("@")[0], r["state"], r["attempts"]) for r in chain] == [
                ("PRIMARY", "failed", 2), ("BACKUP", "sent", 1), ("NEVER", "skipped", 0)]
            assert "cannot connect" in chain[0]["last_error"]
            assert backup.received_uids() == uids(first)
            # the primary is back: 'magickbox route retry' makes its failed send due again
            primary = StorescpPeer(tmp_path / "primary", "PRIMARY")
            primary.port = dead_port
            with primary:
                out = subprocess.run([MAGICKBOX, "route", "retry", str(copy_job["id"]), "--data-dir", str(data)],
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0 and "1 failed send(s) due again" in out.stdout, out.stderr
                wait_until("the primary to receive", lambda: routing_of(node, copy_job["id"])[0]["state"] == "sent",
                           node=node)
                assert primary.received_uids() == uids(first)

            late_job = job_for(node, "ProcLate")
            retrying = wait_until("two failed attempts", lambda: (
                r if (r := routing_of(node, late_job["id"])) and r[0]["attempts"] >= 2 and r[0]["state"] == "pending"
                else None), node=node)[0]
            assert "cannot connect" in retrying["last_error"] and retrying["next_try"] > time.time() - 1
            assert "retry in" in node.log()
            # removing a job whose results wait for their destination is refused
            auth = {"Authorization": f"Bearer {node.token}"}
            refused = httpx.delete(f"{node.url}/api/jobs/{late_job['id']}", headers=auth, timeout=30)
            assert refused.status_code == 409 and "still being routed" in refused.text, refused.text
            late.start()
            done = routed(node, late_job["id"], states=("sent",))[0]
            assert done["sent"] == 3 and done["attempts"] >= 3 and done["last_error"] == ""
            assert set(late.received()) == uids(second)
            # once delivered it can go, and its routing rows go with it
            assert httpx.delete(f"{node.url}/api/jobs/{late_job['id']}", headers=auth, timeout=30).status_code == 200
            with sqlite3.connect(DataLayout.of(data).database) as db:
                left = [db.execute(f"SELECT count(*) FROM {table} WHERE {where}", (late_job["id"],)).fetchone()[0]
                        for table, where in (("route_plans", "job_id = ?"), ("route_sends", "job_id = ?"),
                                             ("route_acks", "send_id IN (SELECT id FROM route_sends "
                                                            "WHERE job_id = ?)"))]
            assert left == [0, 0, 0]
        finally:
            node.stop()
            late.stop()


def test_node_killed_during_a_send_finishes_it_after_restart_without_resending(tmp_path):
    """SIGKILL while a slow PACS receives: after the restart the send resumes; every
    instance the PACS had acknowledged before the kill arrives exactly once, and all
    arrive."""
    buckets = tmp_path / "node" / "buckets"
    process_bucket(buckets, "ProcCopy", COPY_SCRIPT)
    data = tmp_path / "node"
    data.mkdir(exist_ok=True)
    with SlowStorescp(tmp_path / "slow", "SLOW", delay=1) as slow:
        (data / "routing.json").write_text(json.dumps({"routing": [
            {"AETitleIn": "ProcCopy", "send": [{"success": dest(slow.port, "SLOW", retry={"count": 5, "backoff": 1})}]}]}))
        node = MagickboxProcess(data, quiet_seconds=1.0).start()
        try:
            files = make_study(tmp_path / "s1", 4)
            storescu(node.dicom_port, "ProcCopy", files)

            def acks() -> set[str]:
                """What the worker recorded as acknowledged (fsynced per file)."""
                return {line.split()[0] for path in (data / "jobs").glob("*/routing/send-*.acks")
                        for line in path.read_text().splitlines() if line.strip()}
            wait_until("two acknowledged files", lambda: len(acks()) >= 2, timeout=90, node=node)
            node.kill()
            before = acks()
            assert 2 <= len(before) < 4
            node.start()
            job = job_for(node, "ProcCopy")
            done = routed(node, job["id"], states=("sent",))[0]
            assert done["sent"] == 4
            received = slow.received()
            assert set(received) == uids(files)
            for uid in before:
                assert received.count(uid) == 1, f"{uid} was acknowledged before the kill and sent again"
            assert len(received) <= 5                 # at most the file in flight at the kill twice
            assert "resuming 1 send(s)" in node.log()
            assert "the worker died" in (data / "jobs" / str(job["id"]) / "routing.log").read_text()
        finally:
            node.stop()


def test_invalid_routing_json_refuses_the_start_naming_rule_and_key(tmp_path):
    data = tmp_path / "node"
    data.mkdir(exist_ok=True)
    (data / "routing.json").write_text(json.dumps({"routing": [
        {"name": "ok", "AETitleIn": ".*", "send": [{".*": dest(104, "PACS")}]},
        {"name": "bad", "AETitleIn": "(", "send": [{".*": dest(104, "PACS")}]}]}))
    proc = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(data), "--dicom-port", str(free_port()),
                           "--http-port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "rule 1 ('bad')" in proc.stderr and "'AETitleIn'" in proc.stderr


def test_return_to_the_calling_ae_from_the_known_ae_table(tmp_path):
    """"AETitleTo": "$caller" sends the results back to the AE title that sent the study,
    at the address [routing.known_aes] gives for it."""
    buckets = tmp_path / "node" / "buckets"
    process_bucket(buckets, "ProcCopy", COPY_SCRIPT)
    data = tmp_path / "node"
    data.mkdir(exist_ok=True)
    with StorescpPeer(tmp_path / "scanner", "SCANNER") as scanner:
        (data / "routing.json").write_text(json.dumps({"routing": [
            {"AETitleIn": "ProcCopy", "send": [{"success": {"AETitleSender": "HOPS", "AETitleTo": "$caller"}}]}]}))
        node = MagickboxProcess(data, quiet_seconds=1.0,
                                config={"routing": {"known_aes": {"SCANNER": f"127.0.0.1:{scanner.port}"}}}).start()
        try:
            files = make_study(tmp_path / "s1", 2)
            storescu(node.dicom_port, "ProcCopy", files, calling="SCANNER")
            job = job_for(node, "ProcCopy")
            assert [r["state"] for r in routed(node, job["id"])] == ["sent"]
            assert scanner.received_uids() == uids(files)
        finally:
            node.stop()


@pytest.mark.parametrize("routing, key", [
    ({"senders": 0}, "routing.senders"),
    ({"timeout": "soon"}, "routing.timeout"),
    ({"known_aes": {"PACS": "10.0.0.5"}}, "routing.known_aes.PACS"),
    ({"known_aes": {"BAD\\AE": "10.0.0.5:104"}}, "routing.known_aes"),
    ({"port": 70000}, "routing.port"),
    ({"retries": 3}, "routing.retries"),
])
def test_routing_config_errors_name_the_key(tmp_path, routing, key):
    from magickbox.config import ConfigError, build_node_config
    with pytest.raises(ConfigError) as err:
        build_node_config({"data_dir": str(tmp_path), "routing": routing})
    assert str(err.value).startswith(f"{key}:")


def test_route_test_uses_the_known_ae_table_of_the_config(tmp_path):
    data = tmp_path / "node"
    job = data / "jobs" / "3"
    (job / "result" / "output").mkdir(parents=True)
    (job / "info.json").write_text(json.dumps({"AETitleCalled": "ProcCopy", "AETitleCaller": "SCANNER"}))
    (job / "result" / "output" / "proc.json").write_text('[{"success": "success"}]')
    (data / "routing.json").write_text(json.dumps({"routing": [
        {"AETitleIn": "ProcCopy", "send": [{"success": {"AETitleSender": "HOPS", "AETitleTo": "$caller"},
                                            "failed": dest(104, "ERRORS")}]}]}))
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{data}"\n[routing.known_aes]\nSCANNER = "10.1.2.3:4104"\n')
    out = subprocess.run([MAGICKBOX, "route", "test", "3", "--config", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'success' -> SCANNER@10.1.2.3:4104: sends" in out.stdout
    assert "'failed' -> ERRORS: skipped, success value 'success' does not match" in out.stdout


def test_a_partial_failure_is_recorded_per_file_and_retried_without_resending_the_rest(tmp_path):
    """One output file has a SOP class the PACS does not take: the others are stored once,
    the job's routing shows the failed file (routing.log names it), and the retries send
    only that file again before the send is marked failed."""
    data = tmp_path / "node"
    data.mkdir()
    good = make_study(tmp_path / "s1", 3)
    odd = make_study(tmp_path / "odd", 1, study_uid=str(pydicom.dcmread(good[0]).StudyInstanceUID))[0]
    ds = pydicom.dcmread(odd)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.1345.99.1"   # unknown
    ds.save_as(odd, enforce_file_format=True)
    process_bucket(data / "buckets", "ProcCopy", COPY_SCRIPT + f'cp "{odd}" "$2/odd.dcm"\n')
    with SlowStorescp(tmp_path / "pacs", "PACS", delay=0) as pacs:
        (data / "routing.json").write_text(json.dumps({"routing": [
            {"AETitleIn": "ProcCopy", "send": [{".*": dest(pacs.port, "PACS", retry={"count": 2, "backoff": 0.2})}]}]}))
        node = MagickboxProcess(data, quiet_seconds=1.0).start()
        try:
            storescu(node.dicom_port, "ProcCopy", good)
            job = job_for(node, "ProcCopy")
            record = routed(node, job["id"])[0]
            assert (record["state"], record["sent"], record["failed"], record["attempts"]) == ("failed", 3, 1, 3)
            assert "1 file(s) not stored" in record["last_error"]
            # no file name (a SOP UID for input routes) or peer text on the record or in the node log
            assert "odd.dcm" not in record["last_error"] and "odd.dcm" not in node.log()
            log = (data / "jobs" / str(job["id"]) / "routing.log").read_text()
            assert log.count("output/odd.dcm: the peer accepted no presentation context") == 3   # once per attempt
            assert sorted(pacs.received()) == sorted(uids(good))         # each good file exactly once
        finally:
            node.stop()


def test_sends_run_on_gearman_workers_and_a_killed_worker_is_replaced(tmp_path, gearmand):
    """With gearmand and no embedded worker, a ``magickbox worker`` runs the sends (gearman
    function ``route``).  SIGKILL that worker during a slow send and start another: the
    send resumes on the new worker, which sends only what the PACS had not acknowledged."""
    from dicom_helpers import stop_process
    data = tmp_path / "node"
    data.mkdir()
    process_bucket(data / "buckets", "ProcCopy", COPY_SCRIPT)
    workers: list[subprocess.Popen] = []

    def start_worker() -> subprocess.Popen:
        log = open(tmp_path / f"worker{len(workers)}.log", "wb")
        workers.append(subprocess.Popen([MAGICKBOX, "worker", "--gearman", gearmand.address, "--data-dir", str(data),
                                         "--route-senders", "1"], stdout=log, stderr=subprocess.STDOUT))
        return workers[-1]

    with SlowStorescp(tmp_path / "slow", "SLOW", delay=1) as slow:
        (data / "routing.json").write_text(json.dumps({"routing": [
            {"AETitleIn": "ProcCopy", "send": [{"success": dest(slow.port, "SLOW", retry={"count": 3, "backoff": 0.5})}]}]}))
        node = MagickboxProcess(data, quiet_seconds=1.0, config={
            "data_dir": str(data), "worker": {"enabled": False},
            "gearman": {"servers": [gearmand.address], "resubmit_after": 5}}).start()
        try:
            first = start_worker()
            files = make_study(tmp_path / "s1", 4)
            storescu(node.dicom_port, "ProcCopy", files)
            acks_glob = "jobs/*/routing/send-*.acks"
            wait_until("an acknowledged file", lambda: any(p.read_text() for p in data.glob(acks_glob)),
                       timeout=90, node=node)
            first.kill()
            first.wait(10)
            before = {line.split()[0] for p in data.glob(acks_glob) for line in p.read_text().splitlines()}
            start_worker()
            job = job_for(node, "ProcCopy")
            done = routed(node, job["id"], states=("sent",))[0]
            # gearmand hands the dead worker's attempt to the new worker, or the node saw the
            # dead claim first and queued a second attempt: either way it resumes
            assert done["sent"] == 4 and done["attempts"] in (1, 2)
            received = slow.received()
            assert set(received) == uids(files)
            assert all(received.count(uid) == 1 for uid in before)
            assert len(received) <= 5
        finally:
            node.stop()
            for w in workers:
                stop_process(w)


def test_the_manual_example_routes_as_documented(tmp_path):
    """The routing.json of the MagickBox manual (section 5.1), with its PACS address pointed
    at a storescp and its default rule switched on: a ProcRSI job called by PACS sends its
    output to PACS (the 'success' entry, 'which' 0008,103e '.*'), and the default rule sends
    it to "OsiriX" at $me:$port, the node itself.  The disabled INPUT rule sends nothing."""
    from test_routing_send import MANUAL_EXAMPLE
    data = tmp_path / "node"
    data.mkdir()
    process_bucket(data / "buckets", "ProcRSI", COPY_SCRIPT)
    with StorescpPeer(tmp_path / "pacs", "PACS") as pacs:
        text = (MANUAL_EXAMPLE.replace('"192.168.0.1"', '"127.0.0.1"').replace('"403"', f'"{pacs.port}"')
                .replace('"status": 0', '"status": 1'))
        (data / "routing.json").write_text(text)
        node = MagickboxProcess(data, quiet_seconds=1.0, config={
            "data_dir": str(data), "dicom": {"extra_ae_titles": ["OsiriX"],
                                             "access": {"OsiriX": {"calling_ae_titles": ["ProcDefault"]}}}}).start()
        try:
            files = make_study(tmp_path / "s1", 3, SeriesDescription="RSI")
            storescu(node.dicom_port, "ProcRSI", files, calling="PACS")
            job = job_for(node, "ProcRSI")
            records = routed(node, job["id"])
            assert [(r["rule"], r["destination"], r["directory"], r["state"], r["sent"]) for r in records] == [
                (0, f"OsiriX@127.0.0.1:{node.dicom_port}", "OUTPUT", "sent", 3),
                (1, f"PACS@127.0.0.1:{pacs.port}", "OUTPUT", "sent", 3)]
            assert [r["calling_ae"] for r in records] == ["ProcDefault", "me"]
            assert pacs.received_uids() == uids(files)
        finally:
            node.stop()


def test_jobs_finished_before_routing_existed_are_not_sent_again(tmp_path):
    """Upgrading a node: jobs already final when the routing tables are created count as
    routed; jobs that end later are planned (found by the LEFT JOIN, whatever their order)."""
    import time as _time

    from magickbox.db import Database
    from magickbox.results.outflow import RouteStore

    db = Database(tmp_path / "magickbox.sqlite")
    try:
        old = db.create_job("ProcA", "SCANNER", "127.0.0.1", "1.2.3", "dicom", _time.time(), 1, 1, {})
        db.commit_result(old.id, "success", "", 0, None, _time.time(), None, 0)
        later = db.create_job("ProcA", "SCANNER", "127.0.0.1", "1.2.4", "dicom", _time.time(), 1, 1, {})
        store = RouteStore(db)
        assert store.unplanned_jobs() == []
        newer = db.create_job("ProcA", "SCANNER", "127.0.0.1", "1.2.5", "dicom", _time.time(), 1, 1, {})
        db.commit_result(newer.id, "failed", "", 1, None, _time.time(), None, 0)
        db.commit_result(later.id, "success", "", 0, None, _time.time(), None, 0)
        assert [j.id for j in store.unplanned_jobs()] == [later.id, newer.id]
        assert [j.id for j in RouteStore(db).unplanned_jobs(floor=newer.id)] == [newer.id]
    finally:
        db.close()


def test_the_planning_floor_never_skips_a_job_that_finishes_late(tmp_path):
    import time as _time

    from magickbox.config import RoutingConfig
    from magickbox.db import Database
    from magickbox.layout import DataLayout
    from magickbox.results.outflow import RouteStage

    layout = DataLayout.of(tmp_path)
    db = Database(layout.database)
    try:
        stage = RouteStage(layout, db, RoutingConfig(), lambda: ("127.0.0.1", 104))
        jobs = [db.create_job("ProcA", "SCANNER", "127.0.0.1", f"1.2.{i}", "dicom", _time.time(), 1, 1, {})
                for i in range(4)]
        for j in (jobs[1], jobs[3]):
            db.commit_result(j.id, "success", "", 0, None, _time.time(), None, 0)
        stage.run_once()
        assert stage.store.plan(jobs[1].id) and stage.store.plan(jobs[3].id)
        assert stage._floor == jobs[0].id                     # job 0 is still queued
        for j in (jobs[2], jobs[0]):
            db.commit_result(j.id, "failed", "", 1, None, _time.time(), None, 0)
        stage.run_once()
        assert all(stage.store.plan(j.id) for j in jobs)
        assert stage._floor == jobs[-1].id + 1
        stage.stop()
    finally:
        db.close()
