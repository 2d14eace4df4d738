"""magickbox serve against dcmtk: durable receive, acceptance, hostile input, study
completion, crash safety."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from dicom_helpers import (
    MAGICKBOX,
    STORESCU_TS_FLAGS,
    MagickboxProcess,
    acknowledged_files,
    dataset_bytes,
    make_study,
    storescu,
    write_bucket,
)
from pydicom.uid import generate_uid


@pytest.fixture
def node(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    write_bucket(data / "buckets", "ProcOff", enabled=False)
    proc = MagickboxProcess(data, quiet_seconds=1.5, extra_args=["--no-worker"]).start()   # jobs stay queued
    yield proc
    proc.stop()


def _testdata_by_syntax() -> dict[str, Path]:
    """One pydicom test file per transfer syntax dcmtk can propose, distinct SOP UIDs."""
    chosen: dict[str, Path] = {}
    seen_sops = set()
    # the files bundled with pydicom (get_testdata_files would try to download others)
    bundled = Path(pydicom.data.__file__).parent / "test_files"
    for name in sorted(str(p) for p in bundled.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
            sop = str(ds.SOPInstanceUID)
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception:
            continue
        if ts not in STORESCU_TS_FLAGS or ts in chosen or sop in seen_sops or not study or not series:
            continue
        if not all(re.fullmatch(r"[0-9.]{1,64}", u) for u in (sop, study, series)):
            continue
        chosen[ts] = Path(name)
        seen_sops.add(sop)
    return chosen


@pytest.fixture
def bit_preserving_peer(tmp_path):
    """dcmtk storescp writing exactly the bytes it receives: what went over the wire."""
    from stability_collector.localgraphite import free_port, wait_for_port
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "+B", "+xa", "-aet", "PACS", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc, what="storescp")
    yield port, out
    proc.terminate()
    proc.wait(10)


def test_plain_and_compressed_instances_arrive_byte_for_byte(node, bit_preserving_peer):
    peer_port, peer_dir = bit_preserving_peer
    files = _testdata_by_syntax()
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"} <= set(files)
    unchanged_by_dcmtk = 0
    for ts, path in files.items():
        storescu(node.dicom_port, "ProcQA", [path], extra=[STORESCU_TS_FLAGS[ts]])
        storescu(peer_port, "PACS", [path], extra=[STORESCU_TS_FLAGS[ts]])
    for ts, path in files.items():
        src = pydicom.dcmread(path, stop_before_pixels=True)
        archived = (node.data_dir / "archive" / src.StudyInstanceUID / src.SeriesInstanceUID /
                    f"{src.SOPInstanceUID}.dcm")
        assert archived.exists(), f"{path.name} ({ts}) not archived"
        wire = [p for p in peer_dir.iterdir() if src.SOPInstanceUID in p.name]
        assert len(wire) == 1
        # exactly the bytes that were sent (dcmtk re-encodes some files before sending)
        assert dataset_bytes(archived) == dataset_bytes(wire[0]), f"{path.name} changed on the way"
        if dataset_bytes(wire[0]) == dataset_bytes(path):
            unchanged_by_dcmtk += 1
            assert dataset_bytes(archived) == dataset_bytes(path)
        meta = pydicom.dcmread(archived, stop_before_pixels=True).file_meta
        assert str(meta.TransferSyntaxUID) == ts
        assert meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
        assert meta.SourceApplicationEntityTitle == "SCANNER"
        assert not list((node.data_dir / "tmp").glob("*.part"))
    assert unchanged_by_dcmtk >= 5          # incl. JPEG, JPEG lossless, JPEG 2000, big endian, implicit VR
    # a full decode of a compressed file still works from the archive
    jpeg = files["1.2.840.10008.1.2.4.50"]
    src = pydicom.dcmread(jpeg)
    out = pydicom.dcmread(node.data_dir / "archive" / src.StudyInstanceUID / src.SeriesInstanceUID /
                          f"{src.SOPInstanceUID}.dcm")
    assert out.PixelData == src.PixelData


def test_unknown_or_disabled_called_ae_is_rejected(node, tmp_path):
    for called in ("NOPE", "ProcOff"):
        proc = subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", called, "127.0.0.1", str(node.dicom_port)],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        assert "Called AE Title Not Recognized" in proc.stderr, proc.stderr
    ok = subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1", str(node.dicom_port)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    files = make_study(tmp_path / "s", 2)
    assert storescu(node.dicom_port, "NOPE", files, check=False).returncode != 0
    assert node.archived() == []
    assert "to NOPE: called AE title 'NOPE' is not an installed bucket" in node.log()


def _hostile(tmp_path: Path, name: str, **uids: str) -> Path:
    ds = pydicom.dcmread(make_study(tmp_path / "hostile-src", 1)[0])
    for key, value in uids.items():
        ds[key].value = value   # bypasses UID validation on purpose
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=False)
    return path


def test_hostile_uids_are_refused_and_nothing_is_written_outside(node, tmp_path):
    cases = {
        "dotdot.dcm": {"StudyInstanceUID": "../../x"},
        "slash.dcm": {"SeriesInstanceUID": "1.2/../../../etc"},
        "long.dcm": {"StudyInstanceUID": "1." + "2" * 70},
        "empty.dcm": {"SeriesInstanceUID": ""},
        "letters.dcm": {"StudyInstanceUID": "1.2.abc"},
    }
    paths = {name: _hostile(tmp_path, name, **uids) for name, uids in cases.items()}
    good = make_study(tmp_path / "good", 1)
    before = {p for p in tmp_path.rglob("*")}
    for name, path in paths.items():
        proc = storescu(node.dicom_port, "ProcQA", [path], check=False)
        assert "Received Store Response (Error: CannotUnderstand)" in proc.stderr, f"{name}: {proc.stderr[-800:]}"
    # a good instance still goes through
    storescu(node.dicom_port, "ProcQA", good)
    after = {p for p in tmp_path.rglob("*")}
    new = {p for p in after - before if node.data_dir not in p.parents and p != node.log_path}
    assert not new, f"written outside the data dir: {new}"
    assert [p.name for p in node.archived()] == [f"{pydicom.dcmread(good[0]).SOPInstanceUID}.dcm"]
    assert not any(p.name == "x" or p.name == "etc" for p in after)
    log = node.log()
    assert log.count("(status 0xC220)") == len(cases)
    assert "Study Instance UID '../../x' is not a valid UID" in log
    assert "longer than 64 characters" in log


def _raw_c_store(assoc, sop_class: str, sop_instance: str, payload: bytes, msg_id: int) -> int:
    """Send a C-STORE whose data set is arbitrary bytes (what a broken peer might send)."""
    from pynetdicom.dimse_primitives import C_STORE
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = BytesIO(payload)
    cx_id = assoc._get_valid_context(sop_class, "", "scu").context_id
    assoc._reactor_checkpoint.clear()           # as pynetdicom's send_c_store does
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, cx_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return rsp.Status


def test_sop_uid_mismatch_and_non_dicom_payloads_get_failure_status(node, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    good = pydicom.dcmread(make_study(tmp_path / "m", 1)[0])
    from pynetdicom.dsutils import encode
    encoded = BytesIO(encode(good, False, True))             # explicit VR little endian
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="ProcQA")
    assert assoc.is_established
    try:
        statuses = [
            _raw_c_store(assoc, MRImageStorage, generate_uid(), b"this is not DICOM at all" * 10, 1),
            _raw_c_store(assoc, MRImageStorage, generate_uid(), b"\x08\x00\x18\x00\xff\xff\xff\xff", 2),
            _raw_c_store(assoc, MRImageStorage, generate_uid(), encoded.getvalue(), 3),   # UID mismatch
            _raw_c_store(assoc, MRImageStorage, good.SOPInstanceUID, encoded.getvalue(), 4),
        ]
    finally:
        assoc.release()
    assert statuses == [0xC210, 0xC210, 0xC221, 0x0000], [hex(s) for s in statuses]
    assert [p.name for p in node.archived()] == [f"{good.SOPInstanceUID}.dcm"] and node.proc.poll() is None


def test_duplicates_identical_and_different(node, tmp_path):
    files = make_study(tmp_path / "d", 2)
    storescu(node.dicom_port, "ProcQA", files)
    storescu(node.dicom_port, "ProcQA", files)                        # identical again
    archived = node.archived()
    assert len(archived) == 2
    changed = pydicom.dcmread(files[0])
    changed.SeriesDescription = "edited and re-sent"
    changed.save_as(files[0])
    storescu(node.dicom_port, "ProcQA", files[:1])
    superseded = list((node.data_dir / "archive").rglob(".superseded/*.dcm"))
    assert len(superseded) == 1 and len(node.archived()) == 2
    current = [p for p in node.archived() if p.name == f"{changed.SOPInstanceUID}.dcm"][0]
    assert pydicom.dcmread(current).SeriesDescription == "edited and re-sent"
    assert pydicom.dcmread(superseded[0]).get("SeriesDescription") != "edited and re-sent"
    record = next((node.data_dir / "views" / "raw").rglob("*.json"))
    import json
    assert json.loads(record.read_text())["NumFiles"] == "2"


def test_two_concurrent_studies_become_two_jobs(node, tmp_path):
    a = make_study(tmp_path / "a", 20)
    b = make_study(tmp_path / "b", 20, series_per_study=2)
    threads = [threading.Thread(target=storescu, args=(node.dicom_port, "ProcQA", files)) for files in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = node.wait_jobs(2)
    time.sleep(2)
    jobs = node.jobs()
    assert len(jobs) == 2
    by_study = {j["study_uid"]: j for j in jobs}
    assert by_study[pydicom.dcmread(a[0]).StudyInstanceUID]["instance_count"] == 20
    assert by_study[pydicom.dcmread(b[0]).StudyInstanceUID]["series_count"] == 2
    for job in jobs:
        assert job["bucket_ae"] == "ProcQA" and job["calling_ae"] == "SCANNER" and job["caller_ip"] == "127.0.0.1"
        assert job["status"] == "queued"
        info = node.api(f"/api/jobs/{job['id']}")["info"]
        assert info["AETitleCalled"] == "ProcQA" and info["AETitleCaller"] == "SCANNER" and info["CallerIP"]


def test_study_in_two_associations_within_quiet_period_is_one_job(node, tmp_path):
    files = make_study(tmp_path / "s", 10)
    storescu(node.dicom_port, "ProcQA", files[:5])
    time.sleep(0.5)
    storescu(node.dicom_port, "ProcQA", files[5:])
    jobs = node.wait_jobs(1)
    time.sleep(2.5)
    jobs = node.jobs()
    assert len(jobs) == 1 and jobs[0]["instance_count"] == 10
    # a late instance after completion is not dropped: a follow-up job over the whole study
    late = make_study(tmp_path / "late", 1, study_uid=pydicom.dcmread(files[0]).StudyInstanceUID)
    storescu(node.dicom_port, "ProcQA", late)
    jobs = node.wait_jobs(2)
    assert jobs[1]["follow_up_of"] == jobs[0]["id"] and jobs[1]["instance_count"] == 11


def test_restart_during_quiet_period_still_completes(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=3).start()
    try:
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "s", 3))
        node.kill()                                    # well inside the quiet period
        node.start()
        jobs = node.wait_jobs(1, timeout=30)
        assert jobs[0]["instance_count"] == 3
    finally:
        node.stop()


def test_sigkill_during_send_loses_no_acknowledged_instance(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=2).start()
    files = make_study(tmp_path / "big", 300)
    try:
        sender = subprocess.Popen(["storescu", "-v", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1",
                                   str(node.dicom_port), *map(str, files)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=dict(os.environ, TCP_NODELAY="1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(node.archived()) < 60:
            time.sleep(0.02)
        node.kill()
        output, _ = sender.communicate(timeout=60)
        acknowledged = acknowledged_files(output)
        assert 50 <= len(acknowledged) < 300, len(acknowledged)   # the kill may come before the 60th ack
        by_name = {p.name: p for p in node.archived()}
        for src in acknowledged:
            sop = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
            stored = by_name.get(f"{sop}.dcm")
            assert stored is not None, f"acknowledged {src.name} missing after SIGKILL"
            assert dataset_bytes(stored) == dataset_bytes(src)
        # nothing partial in the archive: every file there is complete and readable
        for path in node.archived():
            pydicom.dcmread(path)
        assert not list((data / "archive").rglob("*.part"))
        node.start()                                   # restart: leftovers removed, study completes
        assert not list((data / "tmp").glob("*.part"))
        jobs = node.wait_jobs(1, timeout=30)
        assert jobs[0]["instance_count"] == len(node.archived())
    finally:
        node.stop()


def test_large_instance_is_streamed(tmp_path):
    """A 40 MB instance with a 1 MB spool threshold goes through the disk spool."""
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, config={"data_dir": str(data), "dicom": {"spool_threshold_mb": 1}}).start()
    try:
        src = make_study(tmp_path / "l", 1)[0]
        ds = pydicom.dcmread(src)
        ds.Rows, ds.Columns = 4000, 5000
        ds.PixelData = os.urandom(4000 * 5000 * 2)
        ds.save_as(src)
        storescu(node.dicom_port, "ProcQA", [src])
        stored = node.archived()[0]
        assert dataset_bytes(stored) == dataset_bytes(src)
        assert not list((data / "tmp").iterdir())
    finally:
        node.stop()


def test_calling_ae_allow_list(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, config={"data_dir": str(data), "dicom": {
        "access": {"ProcQA": {"calling_ae_titles": ["SCANNER1"], "caller_ips": ["127.0.0.0/8"]}}}}).start()
    try:
        denied = subprocess.run(["echoscu", "-aet", "OTHER", "-aec", "ProcQA", "127.0.0.1", str(node.dicom_port)],
                                capture_output=True, text=True)
        assert denied.returncode != 0 and "Calling AE Title Not Recognized" in denied.stderr
        allowed = subprocess.run(["echoscu", "-aet", "SCANNER1", "-aec", "ProcQA", "127.0.0.1",
                                  str(node.dicom_port)], capture_output=True, text=True)
        assert allowed.returncode == 0, allowed.stderr
    finally:
        node.stop()


def test_dicom_tls(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    key, cert = tmp_path / "node.key", tmp_path / "node.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    node = MagickboxProcess(data, config={"data_dir": str(data), "dicom": {
        "tls": {"cert": str(cert), "key": str(key)}}}).start()
    try:
        files = make_study(tmp_path / "t", 2)
        storescu(node.dicom_port, "ProcQA", files, extra=["+tla", "-ic"])
        assert len(node.archived()) == 2
        plain = subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1",
                                str(node.dicom_port)], capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0
    finally:
        node.stop()


def test_startup_errors_name_the_problem(tmp_path):
    data = tmp_path / "node"
    bucket = write_bucket(data / "buckets", "ProcQA")
    (bucket / "info.json").write_text('{"name": "x", "description": "", "version": "1", "AETitle": "ProcQA",'
                                      ' "license": "", "enabled": "maybe"}')
    proc = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(data), "--dicom-port", "0", "--http-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "info.json: enabled: expected 1/0, true/false or T/F" in proc.stderr
    write_bucket(data / "buckets", "ProcQA")
    (data / "classifyRules.json").write_text('[{"type": "T1", "rules": [{"tag": ["0x08", "0x70"], '
                                             '"operator": "=~", "value": "GE"}]}]')
    proc = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(data), "--dicom-port", "0", "--http-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "type 1 ('T1'), rule 1: unknown operator '=~'" in proc.stderr
    (data / "classifyRules.json").unlink()
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[dicom]\nport = "eleven"\n')
    proc = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(data), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "dicom.port: expected an integer" in proc.stderr
    cfg.write_text('[dicom]\nportt = 1\n')
    proc = subprocess.run([MAGICKBOX, "serve", "--data-dir", str(data), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "dicom.portt: unknown setting" in proc.stderr


def test_node_metrics_reach_graphite(own_carbon, tmp_path):
    from stability_collector.localgraphite import whisper_value_at
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=0.5, config={
        "data_dir": str(data), "graphite": {"address": own_carbon.line_address, "interval": 0.5}}).start()
    try:
        started = time.time()
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "s", 7))
        subprocess.run(["echoscu", "-aet", "X", "-aec", "NOPE", "127.0.0.1", str(node.dicom_port)],
                       capture_output=True)
        node.wait_jobs(1)
        time.sleep(1.5)
    finally:
        node.stop()                                  # flushes the last report

    def total(metric: str, expected: float) -> float:
        """Sum of the metric's 10-second slots since the test started (polls whisper)."""
        path = own_carbon.whisper_path(f"hops.magickbox.testnode.{metric}")
        own_carbon.wait_for_whisper([f"hops.magickbox.testnode.{metric}"])
        deadline = time.monotonic() + 15
        value = 0.0
        while time.monotonic() < deadline:
            value = sum(whisper_value_at(path, t) or 0 for t in range(int(started) // 10 * 10,
                                                                       int(time.time()) + 10, 10))
            if value == expected:
                break
            time.sleep(0.2)
        return value

    assert total("dicom.received", 7) == 7
    assert total("studies.completed", 1) == 1
    assert total("dicom.rejected", 1) == 1
    assert total("dicom.associations", 1) == 1
