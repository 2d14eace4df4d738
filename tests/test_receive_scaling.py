"""Receive path: anonymous-file archive writes and several receiving processes
(``[dicom] receivers = N``) keeping every invariant of a single receiver."""
from __future__ import annotations

import collections
import errno
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import MagickboxProcess, acknowledged_files, dataset_bytes, make_study, storescu, write_bucket

from magickbox import store as store_module
from magickbox.classify import ClassifyRules
from magickbox.config import ConfigError, build_node_config
from magickbox.db import Database
from magickbox.layout import DataLayout
from magickbox.series import SeriesRecords
from magickbox.store import DicomArchive, StoreOutcome, file_meta, read_stored_meta
from magickbox.studies import StudyTracker

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
SYNTAX = "1.2.840.10008.1.2.1"


def _store(archive: DicomArchive, sop: str, body: bytes, sender: str = "SCANNER"):
    return archive.store("1.2.3", "1.2.3.4", sop, file_meta(SOP_CLASS, sop, SYNTAX, sender), body, sender=sender)


# -- archive ------------------------------------------------------------------------------------
@pytest.mark.parametrize("anonymous", [True, False], ids=["o_tmpfile", "named-part-file"])
def test_archive_new_duplicate_and_replaced_instances(tmp_path, monkeypatch, anonymous):
    if not anonymous:          # a process that may not link anonymous files (no CAP_DAC_READ_SEARCH)
        def refuse(fd, path):
            raise PermissionError(errno.EPERM, "not permitted", str(path))
        monkeypatch.setattr(store_module, "_link_anonymous", refuse)
    archive = DicomArchive(DataLayout.of(tmp_path / "data"))
    created: list[str] = []
    real_open = os.open

    def watch_open(path, flags, *args, **kwargs):
        if str(path).endswith(".part"):
            created.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "open", watch_open)
    first = _store(archive, "1.2.3.4.5", b"A" * 1000)
    assert first.outcome is StoreOutcome.NEW
    assert _store(archive, "1.2.3.4.5", b"A" * 1000, sender="OTHER").outcome is StoreOutcome.IDENTICAL
    assert _store(archive, "1.2.3.4.5", b"B" * 1000, sender="OTHER").outcome is StoreOutcome.REFUSED
    assert _store(archive, "1.2.3.4.5", b"C" * 1000).outcome is StoreOutcome.REPLACED
    with open(first.path, "rb") as fh:
        offset, syntax, source = read_stored_meta(fh)
        fh.seek(offset)
        assert fh.read() == b"C" * 1000 and syntax == SYNTAX and source == "SCANNER"
    assert os.stat(first.path).st_mode & 0o777 == 0o640
    superseded = list((first.path.parent / ".superseded").iterdir())
    assert len(superseded) == 1 and superseded[0].read_bytes().endswith(b"A" * 1000)
    assert not list(archive.tmp.glob("*.part"))
    # a new instance passes through tmp/*.part only where anonymous files cannot be linked
    assert (not created[:1]) == anonymous, created
    # a spilled (disk-spooled) data set is copied by the kernel either way
    spool = archive.new_spool(threshold=10)
    spool.write(b"D" * 5000)
    assert spool.spilled
    big = archive.store("1.2.3", "1.2.3.4", "1.2.3.4.6", file_meta(SOP_CLASS, "1.2.3.4.6", SYNTAX, "S"), spool, "S")
    spool.discard()
    assert big.outcome is StoreOutcome.NEW and big.path.read_bytes().endswith(b"D" * 5000)


def _racer(data_dir: str, tag: str, rounds: int) -> list[str]:
    archive = DicomArchive(DataLayout.of(Path(data_dir)), replace="any")
    outcomes = []
    for i in range(rounds):
        outcomes.append(_store(archive, "1.2.3.4.9", f"{tag}{i:04d}".encode() * 2000).outcome.value)
    return outcomes


def test_processes_racing_on_one_sop_instance_lose_no_version(tmp_path):
    """Two processes replacing the same instance 25 times each: one NEW, every other
    version REPLACED and kept in .superseded (the replace decision holds across processes)."""
    DicomArchive(DataLayout.of(tmp_path / "data"))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_racer, [(str(tmp_path / "data"), "a", 25), (str(tmp_path / "data"), "b", 25)])
    outcomes = collections.Counter(o for r in results for o in r)
    assert outcomes == {"new": 1, "replaced": 49}, outcomes
    series = DataLayout.of(tmp_path / "data").archive / "1.2.3" / "1.2.3.4"
    versions = {p.read_bytes()[-5:] for p in (series / ".superseded").iterdir()}
    versions.add((series / "1.2.3.4.9.dcm").read_bytes()[-5:])
    assert len(list((series / ".superseded").iterdir())) == 49 and len(versions) == 50


# -- study completion with more than one receiving process ------------------------------------
def test_completion_waits_for_an_association_another_process_opened(tmp_path):
    """The parent's completion check and a receiving process share only the database and
    the delivery lists: a study is completed once, with every instance, and an
    association opened after a completion goes to a new delivery list (follow-up job)."""
    layout = DataLayout.of(tmp_path / "data")
    archive = DicomArchive(layout, fsync=False)
    rules = ClassifyRules.empty()
    parent = StudyTracker(Database(layout.database), archive, SeriesRecords(layout, rules, shared=True), 0.0)
    child = StudyTracker(Database(layout.database), archive, SeriesRecords(layout, rules, shared=True), 0.0)

    def receive(assoc: object, sops: list[str]) -> None:
        for sop in sops:
            key = child.study_opened(assoc, "ProcQA", "SCANNER", "127.0.0.1", "1.2.3")
            child.instance_arriving(key, "1.2.3.4", sop)
            _store(archive, sop, sop.encode() * 10)
            child.instance_stored(key, "1.2.3.4", sop)

    receive("assoc1", ["1.9.1", "1.9.2"])
    assert parent.check() == []                       # association still open
    child.association_ended("assoc1")
    stale = parent.db.pending()[0]
    receive("assoc2", ["1.9.3"])                      # opened after the parent read the row
    job = parent._complete(stale, time.time())
    assert job is None and len(parent.db.pending()) == 1   # not completed under the new association
    child.association_ended("assoc2")
    jobs = parent.check()
    assert [j.instance_count for j in jobs] == [3]
    receive("assoc3", ["1.9.4"])                      # same study again, same process
    child.association_ended("assoc3")
    jobs = parent.check()
    assert len(jobs) == 1 and jobs[0].follow_up_of is not None and jobs[0].instance_count == 4
    assert parent.db.job_instances(jobs[0].id)[-1] == ("1.2.3.4", "1.9.4")


def test_receivers_is_a_validated_config_key(tmp_path):
    assert build_node_config({"data_dir": str(tmp_path)}).dicom.receivers == 1
    assert build_node_config({"data_dir": str(tmp_path), "dicom": {"receivers": 4}}).dicom.receivers == 4
    for bad in (0, 65, "two"):
        with pytest.raises(ConfigError, match="dicom.receivers"):
            build_node_config({"data_dir": str(tmp_path), "dicom": {"receivers": bad}})


# -- the node with several receiving processes --------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _receiver_pids(node: MagickboxProcess) -> list[int]:
    return [p for p in _children(node.proc.pid)
            if b"magickbox.receivers" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _multi_node(tmp_path: Path, receivers: int = 2, quiet: float = 1.5) -> MagickboxProcess:
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    return MagickboxProcess(data, quiet_seconds=quiet,
                            config={"data_dir": str(data), "dicom": {"receivers": receivers}})


def test_concurrent_senders_to_several_receivers_one_job_per_study(tmp_path):
    node = _multi_node(tmp_path).start()
    try:
        assert len(_receiver_pids(node)) == 2
        shared = make_study(tmp_path / "shared", 40, series_per_study=2)       # one study, four associations
        other = [make_study(tmp_path / f"other{i}", 15) for i in range(2)]    # two more studies
        sends = [shared[i::4] for i in range(4)] + other
        threads = [threading.Thread(target=storescu, args=(node.dicom_port, "ProcQA", files)) for files in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        node.wait_jobs(3)
        time.sleep(3)                                  # no extra (split) job turns up
        jobs = node.jobs()
        by_study = {j["study_uid"]: j for j in jobs}
        assert len(jobs) == 3 and len(by_study) == 3, [(j["study_uid"], j["instance_count"]) for j in jobs]
        shared_uid = pydicom.dcmread(shared[0]).StudyInstanceUID
        assert by_study[shared_uid]["instance_count"] == 40 and by_study[shared_uid]["series_count"] == 2
        for files in other:
            assert by_study[pydicom.dcmread(files[0]).StudyInstanceUID]["instance_count"] == 15
        archived = node.archived()
        assert len(archived) == 70 and len({p.name for p in archived}) == 70
        # series records count every instance once, whichever process took it
        records = list((node.data_dir / "views" / "raw" / shared_uid).glob("*.json"))
        import json
        assert sorted(int(json.loads(r.read_text())["NumFiles"]) for r in records) == [20, 20]
        # the status API sums the receiving processes' connection counts
        assert node.api("/api/health")["dicom_connections"]["associated"] == 0
        assert "Traceback" not in node.log() and "PatientName" not in node.log()
        pids = _receiver_pids(node)
    finally:
        node.stop()
    assert _wait_gone(pids, 5) == [], "receiving processes outlived the node's SIGTERM"


def test_sigkill_of_the_node_with_several_senders_loses_no_acknowledged_instance(tmp_path):
    node = _multi_node(tmp_path, quiet=2).start()
    studies = [make_study(tmp_path / f"s{i}", 150) for i in range(3)]
    senders = []
    try:
        for files in studies:
            senders.append(subprocess.Popen(
                ["storescu", "-v", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1", str(node.dicom_port),
                 *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=dict(os.environ, TCP_NODELAY="1")))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(node.archived()) < 120:
            time.sleep(0.02)
        pids = [node.proc.pid, *_receiver_pids(node)]
        assert len(pids) == 3
        for pid in pids:                                   # the whole node at once
            os.kill(pid, signal.SIGKILL)
        node.proc.wait()
        node.proc = None
        acknowledged = []
        for sender in senders:
            output, _ = sender.communicate(timeout=60)
            acknowledged += acknowledged_files(output)
        assert 120 <= len(acknowledged) < 450, len(acknowledged)
        by_name = {p.name: p for p in node.archived()}
        for src in acknowledged:
            stored = by_name.get(f"{pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID}.dcm")
            assert stored is not None, f"acknowledged {src} missing after SIGKILL"
            assert dataset_bytes(stored) == dataset_bytes(src)
        for path in node.archived():
            pydicom.dcmread(path)                          # nothing partial in the archive
        node.start()                                       # restart: each study completes once
        jobs = node.wait_jobs(3, timeout=60)
        time.sleep(3)
        jobs = node.jobs()
        assert len(jobs) == 3
        counts = collections.Counter(p.parent.parent.name for p in node.archived())
        assert {j["study_uid"]: j["instance_count"] for j in jobs} == dict(counts)
        assert not list((node.data_dir / "tmp").glob("*.part"))
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        node.stop()


def test_receiving_processes_exit_when_the_node_is_killed(tmp_path):
    node = _multi_node(tmp_path, receivers=3).start()
    try:
        pids = _receiver_pids(node)
        assert len(pids) == 3
        node.kill()                                        # SIGKILL of the parent only
        assert _wait_gone(pids, 10) == [], "orphaned receiving processes"
        # the port is free again: a new node starts on it
        node.start()
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "after", 3))
        assert node.wait_jobs(1)[0]["instance_count"] == 3
    finally:
        node.stop()
