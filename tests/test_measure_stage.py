"""The node's measures stage against a real carbon-cache: a bucket's measures.json becomes
datapoints at the study's acquisition time, waits (across a node restart) while carbon is
down, shows on the job record, and never puts a patient-identifying value into a metric
path."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from zoneinfo import ZoneInfo

import httpx
import pytest
from conftest import wait_for_values
from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study, process_bucket, storescu, write_bucket
from pydicom.uid import generate_uid

from magickbox.buckets import BucketError, load_bucket_info
from magickbox.config import ConfigError, build_node_config
from stability_collector.localgraphite import whisper_value_at

BERLIN = ZoneInfo("Europe/Berlin")
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN778899", "AccessionNumber": "ACC4455",
           "PatientBirthDate": "19800101"}


def measures_script(doc: dict | str) -> str:
    """A process bucket that writes ``doc`` as its measures.json and reports success."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return ("cat > \"$2/measures.json\" <<'EOF'\n" + text + "\nEOF\n"
            "echo '[{\"success\": \"success\", \"message\": \"measured\"}]' > \"$2/proc.json\"\n")


GOOD = {"version": 1, "measures": [{"name": "snr", "value": 101.5, "unit": "", "labels": {"roi": "21x21"}},
                                   {"name": "slice.03.sfnr", "value": 88.0, "unit": "%"}]}


def finished_job(layout, db, folder, station: str, status: str | None = "success") -> int:
    """A job of bucket ProcMeas whose input is one instance of ``station`` (acquired
    2023-01-02 03:04:05) and whose output has the GOOD measures.json; committed with
    ``status`` (None: left running)."""
    files = make_study(folder / station, 1, StationName=station, AcquisitionDate="20230102",
                       AcquisitionTime="030405", **PATIENT)
    job = db.create_job("ProcMeas", "SCANNER", "127.0.0.1", "1.2.3", "dicom", time.time(), 1, 1, {})
    jobdir = layout.job_dir(job.id)
    (jobdir / "input" / "series").mkdir(parents=True)
    files[0].rename(jobdir / "input" / "series" / "a.dcm")
    (jobdir / "result" / "output").mkdir(parents=True)
    (jobdir / "result" / "output" / "measures.json").write_text(json.dumps(GOOD))
    if status is not None:
        db.commit_result(job.id, status, "", 0, None, time.time(), "w", 0)
    return job.id


def node_config(carbon_address: str, **measures) -> dict:
    return {"graphite": {"address": carbon_address, "interval": 60},
            "measures": {"timezone": "Europe/Berlin", "interval": 0.2, "retry_interval": 0.5, **measures}}


def wait_detail(node: MagickboxProcess, job_id: int, ready, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    detail: dict = {}
    while time.monotonic() < deadline:
        detail = node.api(f"/api/jobs/{job_id}")
        if ready(detail):
            return detail
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: measures not as expected: {detail.get('measures')} "
                         f"{detail.get('measures_error')}\n{node.log()[-3000:]}")


def collected(detail: dict) -> bool:
    return bool(detail["measures"] or detail["measures_error"])


def all_delivered(detail: dict) -> bool:
    return bool(detail["measures"]) and all(m["delivered"] for m in detail["measures"])


def test_measures_reach_carbon_at_acquisition_time_and_wait_for_it_across_a_restart(tmp_path, own_carbon):
    node = MagickboxProcess(tmp_path / "node", config=node_config(own_carbon.line_address))
    process_bucket(node.data_dir / "buckets", "ProcMeas", measures_script(GOOD))
    first = make_study(tmp_path / "s1", 2, StationName="MR Bay 1", AcquisitionDate="20240315",
                       AcquisitionTime="101530", **PATIENT)
    second = make_study(tmp_path / "s2", 1, StationName="MR Bay 2", AcquisitionDate="20240316",
                        AcquisitionTime="081000.5", **PATIENT)
    node.start()
    try:
        storescu(node.dicom_port, "ProcMeas", first)
        job = node.wait_final(1)[0]
        detail = wait_detail(node, job["id"], all_delivered)
        when = int(dt.datetime(2024, 3, 15, 10, 15, 30, tzinfo=BERLIN).timestamp())
        expected = {"hops.measures.ProcMeas.MR_Bay_1.snr": 101.5, "hops.measures.ProcMeas.MR_Bay_1.slice.03.sfnr": 88.0}
        assert wait_for_values(own_carbon, expected, when) == expected
        # the study's time, not the processing time
        assert whisper_value_at(own_carbon.whisper_path("hops.measures.ProcMeas.MR_Bay_1.snr"), int(time.time())) is None
        snr = next(m for m in detail["measures"] if m["name"] == "snr")
        assert snr == {"name": "snr", "value": 101.5, "unit": "", "labels": {"roi": "21x21"}, "timestamp": when,
                       "time": "2024-03-15T09:15:30+00:00", "path": "hops.measures.ProcMeas.MR_Bay_1.snr",
                       "delivered": True}
        assert detail["measures_error"] is None
        ui = httpx.Client(base_url=node.url)
        assert ui.post("/ui/login", data={"token": node.token}).status_code == 303
        page = ui.get(f"/ui/jobs/{job['id']}").text
        assert "hops.measures.ProcMeas.MR_Bay_1.slice.03.sfnr" in page and "2024-03-15T09:15:30+00:00" in page
        # carbon goes down: the next job is final, its measures wait
        own_carbon.stop_carbon()
        storescu(node.dicom_port, "ProcMeas", second)
        jobs = node.wait_final(2)
        waiting = wait_detail(node, jobs[1]["id"], collected)
        assert waiting["status"] == "success" and [m["delivered"] for m in waiting["measures"]] == [False, False]
    finally:
        node.stop()
    listed = subprocess.run([MAGICKBOX, "jobs", "--data-dir", str(node.data_dir)], capture_output=True, text=True,
                            check=True).stdout
    assert "2 measures delivered" in listed and "2 measures (2 waiting for Graphite)" in listed
    shown = subprocess.run([MAGICKBOX, "jobs", "--data-dir", str(node.data_dir), "--show", str(jobs[1]["id"])],
                           capture_output=True, text=True, check=True).stdout
    assert "hops.measures.ProcMeas.MR_Bay_2.slice.03.sfnr = 88 %  at 2024-03-16T07:10:00+00:00  waiting for Graphite" \
        in shown
    # a restart keeps them; once carbon is back they arrive
    node.start()
    try:
        time.sleep(1.0)
        assert not any(m["delivered"] for m in node.api(f"/api/jobs/{jobs[1]['id']}")["measures"])
        own_carbon.start_carbon()
        wait_detail(node, jobs[1]["id"], all_delivered)
        when2 = int(dt.datetime(2024, 3, 16, 8, 10, 0, tzinfo=BERLIN).timestamp())
        expected2 = {"hops.measures.ProcMeas.MR_Bay_2.snr": 101.5, "hops.measures.ProcMeas.MR_Bay_2.slice.03.sfnr": 88.0}
        assert wait_for_values(own_carbon, expected2, when2) == expected2
        assert len(node.jobs()) == 2
    finally:
        node.stop()


def test_no_patient_identifying_value_reaches_a_metric_path(tmp_path, own_carbon):
    """PHI values of the study put wherever they could reach a path — the StationName used
    as subject key, a measure name, a prefix the bucket may use — are refused with the
    reason on the job record; nothing with them reaches whisper or the node's log."""
    study_uid = generate_uid()
    node = MagickboxProcess(tmp_path / "node", config=node_config(own_carbon.line_address))
    buckets = node.data_dir / "buckets"
    process_bucket(buckets, "ProcGood", measures_script(GOOD))
    process_bucket(buckets, "ProcName", measures_script(
        {"measures": [{"name": "ok", "value": 1}, {"name": "patient.MRN778899", "value": 2}]}))
    process_bucket(buckets, "ProcUid", measures_script({"measures": [{"name": f"uid.{study_uid}", "value": 2}]}))
    directory = process_bucket(buckets, "ProcPrefix", measures_script(
        {"prefix": "hops.stability.ACC4455.32ch", "measures": [{"name": "snr", "value": 3}]}))
    info = json.loads((directory / "info.json").read_text())
    (directory / "info.json").write_text(json.dumps({**info, "measures": {"prefixes": ["hops.stability"]}}))
    process_bucket(buckets, "ProcBad", measures_script('{"version": 1,\n "measures": [\n {"name": "a" "value": 1}]}'))
    studies = {station: make_study(tmp_path / station.replace("^", "_"), 1, study_uid=study_uid if i == 0 else None,
                                   StationName=station, AcquisitionDate="20240401", AcquisitionTime="120000",
                                   **PATIENT)
               for i, station in enumerate(["MR Bay 7", "Doe^Jane", "MRN778899", "19800101"])}
    node.start()
    try:
        for ae in ("ProcGood", "ProcName", "ProcUid", "ProcPrefix", "ProcBad"):
            storescu(node.dicom_port, ae, studies["MR Bay 7"])
        for station in ("Doe^Jane", "MRN778899", "19800101"):
            storescu(node.dicom_port, "ProcGood", studies[station])
        jobs = node.wait_final(8)
        details = {(j["bucket_ae"], j["id"]): wait_detail(node, j["id"], collected) for j in jobs}
        for (_, job_id), detail in details.items():
            if detail["measures"]:                    # whatever was accepted has reached carbon
                wait_detail(node, job_id, all_delivered)
        log = node.log()
    finally:
        node.stop()
    when = int(dt.datetime(2024, 4, 1, 12, tzinfo=BERLIN).timestamp())
    expected = {"hops.measures.ProcGood.MR_Bay_7.snr": 101.5}
    assert wait_for_values(own_carbon, expected, when) == expected
    time.sleep(1.0)                        # anything else sent would be in whisper by now
    paths = [str(p.relative_to(own_carbon.whisper_dir)).lower() for p in own_carbon.whisper_dir.rglob("*.wsp")]
    identifying = ["doe", "jane", "mrn778899", "acc4455", "19800101", study_uid.lower(),
                   study_uid.replace(".", "/").lower()]
    leaked = [p for p in paths for v in identifying if v in p]
    assert not leaked
    assert sorted(p for p in paths if p.startswith("hops/measures/")) == [
        "hops/measures/procgood/mr_bay_7/slice/03/sfnr.wsp", "hops/measures/procgood/mr_bay_7/snr.wsp"]
    errors = {key: d["measures_error"] for key, d in details.items() if d["measures_error"]}
    assert len(errors) == 7 and all(d["status"] == "success" for d in details.values())
    for (ae, job_id), error in errors.items():
        assert error.startswith(f"job {job_id}: output/measures.json"), error
        if ae == "ProcBad":
            assert "not valid JSON at line 3" in error
        else:
            assert "refused" in error
        assert not details[(ae, job_id)]["measures"]          # nothing of a refused file is sent
    prefix_error = next(e for (ae, _), e in errors.items() if ae == "ProcPrefix")
    assert "identifying value" in prefix_error
    for value in ("Doe^Jane", "MRN778899", "ACC4455", "19800101", study_uid):
        assert value not in log and value not in json.dumps(list(errors.values()))


def test_measures_configuration_errors_name_the_key(tmp_path):
    for table, key in (({"timezone": "Mars/Olympus"}, "measures.timezone"), ({"subject": "patient"}, "measures.subject"),
                       ({"subject": "hash"}, "measures.salt"), ({"subject": "alias"}, "measures.alias"),
                       ({"serial_aliases": {"166012": "prisma 1"}}, "measures.serial_aliases.166012"),
                       ({"retry": 1}, "measures.retry")):
        with pytest.raises(ConfigError) as err:
            build_node_config({"data_dir": str(tmp_path), "measures": table})
        assert str(err.value).startswith(key + ":"), str(err.value)
    bucket = write_bucket(tmp_path / "buckets", "ProcX", measures={"prefixes": ["hops..stability"]})
    with pytest.raises(BucketError) as berr:
        load_bucket_info(bucket)
    assert "info.json: measures.prefixes: expected a list of dot-separated metric paths (components" in str(berr.value)
    write_bucket(tmp_path / "buckets", "ProcX", measures={"subject": "name"})
    with pytest.raises(BucketError, match="measures.subject: expected one of station, serial, alias, hash"):
        load_bucket_info(bucket)
    bad = tmp_path / "node.toml"
    bad.write_text('[measures]\nsubject = "hash"\n')
    serve = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(tmp_path / "data"), "--config", str(bad)],
                           capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "measures.salt: missing" in serve.stderr
    bad.write_text(f'[measures]\nverify_whisper_dir = "{tmp_path / "no-whisper-here"}"\n')
    serve = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(tmp_path / "data"), "--config", str(bad)],
                           capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "measures.verify_whisper_dir: " in serve.stderr, serve.stderr


def test_a_final_job_is_collected_whenever_it_finished_and_only_once(tmp_path):
    """The stage finds final jobs by a LEFT JOIN on its own table: a job committed just
    before a crash (no measures row yet) is collected by the next process, a job that
    finishes after a later one is not skipped, and nothing is collected twice."""
    from magickbox.buckets import BucketRegistry
    from magickbox.db import Database
    from magickbox.layout import DataLayout
    from magickbox.results.measure_stage import MeasureStage, job_measures, parse_measures_config

    layout = DataLayout.of(tmp_path / "data")
    layout.root.mkdir()
    db = Database(layout.database)
    registry = BucketRegistry(layout.buckets)
    config = parse_measures_config({"timezone": "UTC"})

    first = finished_job(layout, db, tmp_path, "A1", None)
    second = finished_job(layout, db, tmp_path, "B2")
    stage = MeasureStage(layout, db, registry, config, None)
    assert stage.collect_new() == 1
    db.commit_result(first, "success", "", 0, None, time.time(), "w", 0)   # finishes after the later job
    assert stage.collect_new() == 1 and stage.collect_new() == 0
    third = finished_job(layout, db, tmp_path, "C3", "partial")
    failed = finished_job(layout, db, tmp_path, "D4", "failed")   # then the node dies
    restarted = MeasureStage(layout, db, registry, config, None)
    assert restarted.collect_new() == 2 and restarted.collect_new() == 0
    assert job_measures(db, failed) == ([], f"job {failed}: output/measures.json: not sent because the job ended "
                                            "failed (only success and partial jobs' measures are)")
    epoch = int(dt.datetime(2023, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp())
    for job_id, station in ((first, "A1"), (second, "B2"), (third, "C3")):
        measures, error = job_measures(db, job_id)
        assert error is None and [(m["path"], m["timestamp"], m["delivered"]) for m in measures] == [
            (f"hops.measures.ProcMeas.{station}.snr", epoch, False),
            (f"hops.measures.ProcMeas.{station}.slice.03.sfnr", epoch, False)]
    assert restarted.waiting() == 6
    assert restarted.deliver_waiting() == (0, "no Graphite address configured ([graphite] address)")
    db.close()


def test_with_verify_whisper_a_measure_counts_as_delivered_only_once_it_is_in_whisper(tmp_path, own_carbon,
                                                                                       forgetful_carbon):
    """Carbon confirms what it has read, not what it has written (a carbon SIGKILLed in
    between loses it; found by tests/system).  With ``[measures] verify_whisper_dir`` a
    point stays waiting until it is read back from whisper, and is sent again."""
    from magickbox.buckets import BucketRegistry
    from magickbox.db import Database
    from magickbox.layout import DataLayout
    from magickbox.results.measure_stage import MeasureStage, job_measures, parse_measures_config
    from stability_collector.core.graphite import GraphiteAddress, GraphiteSender

    layout = DataLayout.of(tmp_path / "data")
    layout.root.mkdir()
    db = Database(layout.database)
    job_id = finished_job(layout, db, tmp_path, "VERIFY1")
    config = parse_measures_config({"timezone": "UTC", "verify_whisper_dir": str(own_carbon.whisper_dir),
                                    "verify_timeout": 1})
    stage = MeasureStage(layout, db, BucketRegistry(layout.buckets), config, None)
    stage.sender = GraphiteSender(GraphiteAddress("127.0.0.1", forgetful_carbon), timeout=5)
    assert stage.collect_new() == 1
    delivered, error = stage.deliver_waiting()
    assert delivered == 0 and "not in whisper" in error, error
    assert stage.waiting() == 2 and not any(m["delivered"] for m in job_measures(db, job_id)[0])
    stage.sender = GraphiteSender(GraphiteAddress.parse(own_carbon.line_address), timeout=5)
    stage.config = parse_measures_config({"timezone": "UTC", "verify_whisper_dir": str(own_carbon.whisper_dir),
                                          "verify_timeout": 30})
    assert stage.deliver_waiting() == (2, "")
    epoch = int(dt.datetime(2023, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp())
    snr = own_carbon.whisper_dir / "hops/measures/ProcMeas/VERIFY1/snr.wsp"
    assert whisper_value_at(snr, epoch) == GOOD["measures"][0]["value"]     # there when marked delivered
    assert all(m["delivered"] for m in job_measures(db, job_id)[0])
    db.close()
