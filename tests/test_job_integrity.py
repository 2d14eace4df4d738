"""Job results and who sees what, end to end with dcmtk, real buckets and a real carbon:
job metrics match the jobs that ran, a bucket cannot change the archive, a job gets only
what its association set delivered, the node's own AE title has an access policy, an
identical re-send is not a change, and study completion does not race the dispatcher."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study, process_bucket, storescu, write_bucket

OK_SCRIPT = 'echo \'[{"success": "success", "message": "fine"}]\' > "$2/proc.json"\n'






def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_files(node: MagickboxProcess, job: dict) -> list[Path]:
    return sorted((node.data_dir / "jobs" / str(job["id"]) / "input").rglob("*.dcm"))


def job_output(node: MagickboxProcess, job: dict, name: str) -> str:
    return (node.data_dir / "jobs" / str(job["id"]) / "result" / "output" / name).read_text()


def echo(port: int, called: str, calling: str) -> int:
    return subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


# -- 4. job metrics ----------------------------------------------------------------------------
def test_job_metrics_in_carbon_match_the_jobs_that_ran(own_carbon, tmp_path):
    from stability_collector.localgraphite import whisper_value_at
    data = tmp_path / "node"
    buckets = data / "buckets"
    process_bucket(buckets, "ProcOK", "sleep 0.3\n" + OK_SCRIPT)
    process_bucket(buckets, "ProcBad", "exit 3\n")
    process_bucket(buckets, "ProcPart", 'echo \'[{"success": "partial", "message": "2 of 3"}]\' > "$2/proc.json"\n')
    process_bucket(buckets, "ProcSlow", "sleep 30\n", timeout=1)
    process_bucket(buckets, "ProcCancel", "sleep 30\n" + OK_SCRIPT, timeout=60)
    node = MagickboxProcess(data, quiet_seconds=0.5, config={
        "data_dir": str(data), "graphite": {"address": own_carbon.line_address, "interval": 0.5}})
    started = time.time()
    node.start()
    try:
        for i, ae in enumerate(["ProcOK", "ProcOK", "ProcBad", "ProcPart", "ProcSlow", "ProcCancel"]):
            storescu(node.dicom_port, ae, make_study(tmp_path / f"s{i}", 1))
        deadline = time.monotonic() + 60
        cancel = None
        while time.monotonic() < deadline and cancel is None:
            cancel = next((j for j in node.jobs() if j["bucket_ae"] == "ProcCancel" and j["status"] == "running"),
                          None)
            time.sleep(0.1)
        assert cancel is not None, node.jobs()
        subprocess.run([MAGICKBOX, "jobs", "--data-dir", str(data), "--cancel", str(cancel["id"])], check=True,
                       capture_output=True)
        jobs = node.wait_final(6)
        time.sleep(1.5)                                  # one more report after the last commit
    finally:
        node.stop()
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    assert by_status == {"success": 2, "failed": 1, "partial": 1, "timeout": 1, "cancelled": 1}, jobs

    def slots(metric: str) -> list[float]:
        path = own_carbon.whisper_path(f"hops.magickbox.testnode.{metric}")
        own_carbon.wait_for_whisper([f"hops.magickbox.testnode.{metric}"])
        return [whisper_value_at(path, t) or 0 for t in range(int(started) // 10 * 10, int(time.time()) + 10, 10)]

    def total(metric: str, expected: int) -> float:
        deadline = time.monotonic() + 15
        value = 0.0
        while time.monotonic() < deadline:
            value = sum(slots(metric))
            if value == expected:
                break
            time.sleep(0.2)
        return value

    for status in ("success", "failed", "partial", "timeout", "cancelled"):
        assert total(f"jobs.{status}", by_status[status]) == by_status[status], status
    assert max(slots("jobs.start_latency")) > 0
    log = node.log()
    for job in jobs:
        assert f"job {job['id']} ({job['bucket_ae']}) {job['status']} in " in log, job


# -- 5. a bucket cannot change the archive ------------------------------------------------------
REWRITER = """#!{python}
import json, os, sys
from pathlib import Path
import pydicom
done = 0
for path in sorted(Path(sys.argv[1]).rglob("*.dcm")):
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass
    ds = pydicom.dcmread(path)
    ds.PatientName = "REWRITTEN^BY^BUCKET"
    ds.save_as(path)                               # in place, like an anonymiser would
    with open(path, "r+b") as fh:                  # and a raw overwrite of the preamble
        fh.write(b"X" * 64)
    done += 1
(Path(sys.argv[2]) / "rewritten").write_text(str(done))
(Path(sys.argv[2]) / "proc.json").write_text(json.dumps([{{"success": "success"}}]))
"""


def test_a_bucket_that_rewrites_its_input_leaves_the_archive_byte_identical(tmp_path):
    data = tmp_path / "node"
    process_bucket(data / "buckets", "ProcRewrite", REWRITER.format(python=sys.executable))
    node = MagickboxProcess(data, quiet_seconds=0.5, config={"data_dir": str(data)}).start()
    try:
        storescu(node.dicom_port, "ProcRewrite", make_study(tmp_path / "s", 5))
        time.sleep(0.2)
        before = {p: sha256(p) for p in node.archived()}
        job = node.wait_final(1)[0]
        after = {p: sha256(p) for p in node.archived()}
    finally:
        node.stop()
    assert job["status"] == "success", job
    output = node.data_dir / "jobs" / str(job["id"]) / "result" / "output"
    assert (output / "rewritten").read_text() == "5"          # the bucket did write its input...
    assert len(before) == 5 and after == before               # ...and the archive did not change
    for path in node.archived():
        assert pydicom.dcmread(path).PatientName != "REWRITTEN^BY^BUCKET"
    for linked in input_files(node, job):                     # nor did the job's own snapshot
        assert sha256(linked) in set(before.values())


# -- 6. a job gets what its association set delivered ---------------------------------------------
LISTER = ('find "$1" -name "*.dcm" | wc -l | tr -d " " > "$2/count"\n'
          'grep -a -o -h "Victim^Ten\\|Evil^One\\|Trusted^Two" -r "$1" | sort | uniq -c > "$2/names"\n'
          + OK_SCRIPT)


def test_a_blocked_caller_cannot_obtain_another_senders_instances(tmp_path):
    """EVIL may not call ProcA; it sends one instance under the StudyInstanceUID that
    SCANNER1 sent ten instances of to ProcA, to ProcB, which it may use: its job gets its
    own instance, nothing of SCANNER1's."""
    data = tmp_path / "node"
    process_bucket(data / "buckets", "ProcA", LISTER)
    process_bucket(data / "buckets", "ProcB", LISTER)
    node = MagickboxProcess(data, quiet_seconds=0.5, config={"data_dir": str(data), "dicom": {"access": {
        "ProcA": {"calling_ae_titles": ["SCANNER1"]}}}}).start()
    try:
        victim = make_study(tmp_path / "victim", 10, PatientName="Victim^Ten")
        study = pydicom.dcmread(victim[0]).StudyInstanceUID
        storescu(node.dicom_port, "ProcA", victim, calling="SCANNER1")
        assert echo(node.dicom_port, "ProcA", "EVIL") != 0            # EVIL may not use ProcA
        node.wait_final(1)
        evil = make_study(tmp_path / "evil", 1, study_uid=study, PatientName="Evil^One")
        storescu(node.dicom_port, "ProcB", evil, calling="EVIL")
        victim_job, evil_job = node.wait_final(2)
    finally:
        node.stop()
    assert victim_job["status"] == evil_job["status"] == "success"
    assert job_output(node, victim_job, "count").strip() == "10" and victim_job["instance_count"] == 10
    assert job_output(node, evil_job, "count").strip() == "1" and evil_job["instance_count"] == 1
    assert "Victim^Ten" not in job_output(node, evil_job, "names")
    assert len(input_files(node, evil_job)) == 1


def test_whole_study_only_for_buckets_that_ask_and_callers_the_node_trusts(tmp_path):
    data = tmp_path / "node"
    process_bucket(data / "buckets", "ProcA", LISTER)
    whole = process_bucket(data / "buckets", "ProcWhole", LISTER)
    info = json.loads((whole / "info.json").read_text())
    info["run"]["input"] = "study"
    (whole / "info.json").write_text(json.dumps(info))
    node = MagickboxProcess(data, quiet_seconds=0.5, config={"data_dir": str(data), "dicom": {"access": {
        "ProcWhole": {"whole_study_callers": ["TRUSTED"]}}}}).start()
    try:
        victim = make_study(tmp_path / "victim", 10, PatientName="Victim^Ten")
        study = pydicom.dcmread(victim[0]).StudyInstanceUID
        storescu(node.dicom_port, "ProcA", victim, calling="SCANNER1")
        node.wait_final(1)
        evil = make_study(tmp_path / "evil", 1, study_uid=study, PatientName="Evil^One")
        storescu(node.dicom_port, "ProcWhole", evil, calling="EVIL")          # asks for the whole study
        node.wait_final(2)
        trusted = make_study(tmp_path / "trusted", 1, study_uid=study, PatientName="Trusted^Two")
        storescu(node.dicom_port, "ProcWhole", trusted, calling="TRUSTED")
        _, evil_whole, trusted_whole = node.wait_final(3)
    finally:
        node.stop()
    assert evil_whole["status"] == trusted_whole["status"] == "success"
    assert job_output(node, evil_whole, "count").strip() == "1"
    assert "Victim^Ten" not in job_output(node, evil_whole, "names")
    assert "EVIL is not in dicom.access.ProcWhole.whole_study_callers" in node.log()
    assert job_output(node, trusted_whole, "count").strip() == "12"       # the operator trusts TRUSTED
    assert trusted_whole["input_scope"] == "study" and evil_whole["input_scope"] == "delivered"


# -- 7. the node's own AE title and replacing another sender's instance -----------------------------
def test_node_ae_title_echo_from_anyone_storage_only_from_configured_callers(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=0.5, extra_args=["--no-worker"]).start()
    try:
        echoed = echo(node.dicom_port, "MAGICKBOX", "ANYONE")
        refused = storescu(node.dicom_port, "MAGICKBOX", make_study(tmp_path / "a", 2), calling="ANYONE",
                           check=False)
        archived_by_default = node.archived()
    finally:
        node.stop()
    assert echoed == 0
    assert refused.returncode != 0 or "Success" not in refused.stderr
    assert archived_by_default == []
    assert "storage through MAGICKBOX is not allowed for 'ANYONE'" in node.log()
    node = MagickboxProcess(data, quiet_seconds=0.5, extra_args=["--no-worker"], config={
        "data_dir": str(data), "dicom": {"access": {"MAGICKBOX": {"calling_ae_titles": ["ARCHIVER"]}}}}).start()
    try:
        storescu(node.dicom_port, "MAGICKBOX", make_study(tmp_path / "b", 2), calling="ARCHIVER")
        other = storescu(node.dicom_port, "MAGICKBOX", make_study(tmp_path / "c", 2), calling="OTHER",
                         check=False)
        other_echo = echo(node.dicom_port, "MAGICKBOX", "OTHER")
        archived = node.archived()
    finally:
        node.stop()
    assert len(archived) == 2 and other_echo == 0
    assert other.returncode != 0 or "Success" not in other.stderr


def test_a_different_sender_cannot_replace_an_archived_instance(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=0.5, extra_args=["--no-worker"]).start()
    try:
        files = make_study(tmp_path / "s", 2)
        storescu(node.dicom_port, "ProcQA", files, calling="SCANNER1")
        before = {p: sha256(p) for p in node.archived()}
        forged = pydicom.dcmread(files[0])
        forged.PatientName = "Forged^Name"
        forged.save_as(tmp_path / "forged.dcm")
        attempt = storescu(node.dicom_port, "ProcQA", [tmp_path / "forged.dcm"], calling="OTHER", check=False)
        after_forgery = {p: sha256(p) for p in node.archived()}
        superseded_after_forgery = list((data / "archive").rglob(".superseded/*"))
        fixed = pydicom.dcmread(files[0])
        fixed.SeriesDescription = "corrected by its sender"
        fixed.save_as(tmp_path / "fixed.dcm")
        storescu(node.dicom_port, "ProcQA", [tmp_path / "fixed.dcm"], calling="SCANNER1")
        superseded = list((data / "archive").rglob(".superseded/*"))
    finally:
        node.stop()
    assert "Received Store Response (Error: CannotUnderstand)" in attempt.stderr, attempt.stderr[-1500:]
    assert after_forgery == before and superseded_after_forgery == []
    assert len(superseded) == 1                                   # the same sender may correct it
    assert "another sender (dicom.replace = same-sender) (status 0xC222)" in node.log()


# -- 8. an identical instance from another sender is not a change -----------------------------------
def test_identical_instance_from_another_calling_ae_is_not_written_again(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=0.5, extra_args=["--no-worker"]).start()
    try:
        files = make_study(tmp_path / "s", 3)
        storescu(node.dicom_port, "ProcQA", files, calling="SCANNER1")
        before = {p: (sha256(p), p.stat().st_ino) for p in node.archived()}
        storescu(node.dicom_port, "ProcQA", files, calling="SCANNER2")
        after = {p: (sha256(p), p.stat().st_ino) for p in node.archived()}
        jobs = node.wait_jobs(2)
    finally:
        node.stop()
    assert after == before
    assert list((data / "archive").rglob(".superseded")) == []
    assert {j["calling_ae"]: j["instance_count"] for j in jobs} == {"SCANNER1": 3, "SCANNER2": 3}
    assert node.log().count(": identical") == 3


# -- 9. study completion and the dispatcher prepare a job once ---------------------------------------
def test_completion_and_reconciliation_racing_submit_each_job_once(tmp_path):
    from magickbox.buckets import BucketRegistry
    from magickbox.db import Database
    from magickbox.jobqueue import Dispatcher, EmbeddedJobServer
    from magickbox.layout import DataLayout
    from magickbox.store import DicomArchive
    layout = DataLayout.of(tmp_path / "node")
    write_bucket(layout.buckets, "ProcQA")
    archive = DicomArchive(layout, fsync=False)
    registry = BucketRegistry(layout.buckets)
    registry.load()
    db = Database(layout.database)
    server = EmbeddedJobServer()
    dispatcher = Dispatcher(layout, db, archive, registry, [("127.0.0.1", server.port)])
    errors: list[BaseException] = []
    try:
        jobs = []
        for n in range(12):
            files = make_study(tmp_path / f"s{n}", 40)
            study = pydicom.dcmread(files[0]).StudyInstanceUID
            series = pydicom.dcmread(files[0]).SeriesInstanceUID
            for f in files:
                sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                archive.store(study, series, sop, b"", f.read_bytes())
            jobs.append(db.create_job("ProcQA", "SCANNER", "127.0.0.1", study, "backfill", time.time(), 1, 40, {}))
        for job in jobs:
            barrier = threading.Barrier(3)

            def run(work) -> None:
                barrier.wait()
                try:
                    work()
                except BaseException as exc:       # noqa: BLE001 - the test reports it
                    errors.append(exc)
            threads = [threading.Thread(target=run, args=(w,)) for w in
                       (lambda j=job: dispatcher.submit(j), dispatcher.reconcile, dispatcher.reconcile)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        submissions = dict(db.execute("SELECT job_id, count FROM job_submissions").fetchall())
    finally:
        dispatcher.stop()
        server.stop()
        db.close()
    assert errors == [], errors
    assert submissions == {job.id: 1 for job in jobs}, submissions
    for job in jobs:
        assert len(list((layout.job_dir(job.id) / "input").rglob("*.dcm"))) == 40
