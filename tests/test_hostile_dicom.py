"""Malformed DICOM over the wire against a real ``magickbox serve`` while a scanner (dcmtk
``storescu``) keeps sending: bad or absent preambles and data sets that do not parse in
C-STORE, truncated PDUs, absurd PDU and PDV lengths, silent connections and associations,
path-like UIDs (``../../etc``, ``/abs``, very long, NUL bytes), unknown PDU types and PDUs
in the wrong phase.  Every case must end in a clear DICOM status, an A-ABORT or an
A-ASSOCIATE-RJ (or, for a peer that never completes an A-ASSOCIATE-RQ, a closed connection)
with one log line naming the peer; the scanner's studies must all be archived; afterwards
the node still answers C-ECHO and archives a study.  The node runs under ``strace``, with
its working and temporary directories in a watched directory: every file system change it
makes (open for writing, create, rename, link, unlink, mkdir, chmod ...) must be inside its
data directory.

(``tests/test_node_hardening.py`` covers floods, memory bounds and each protection alone;
this file is the combined scenario and what that one lacks.)"""
from __future__ import annotations

import copy
import os
import re
import signal
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from dicom_helpers import MagickboxProcess, associate_rq, dataset_bytes, make_study, storescu, write_bucket
from hostile_peers import Answer, RawAssociation, c_store_command, connect_from, p_data, read_answer
from pynetdicom.dsutils import encode

MR = "1.2.840.10008.5.1.4.1.1.4"
ASSOCIATION_TIMEOUT = 3          # dicom.association_timeout of the node under test (s)
IDLE_TIMEOUT = 6                 # dicom.idle_timeout (s)

#: syscalls that change the file system (strace -e trace=...)
WRITE_SYSCALLS = ("open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,"
                  "symlinkat,unlink,unlinkat,rmdir,truncate,chmod,fchmodat,chown,lchown,fchownat,mknod,mknodat,"
                  "utimensat,setxattr,lsetxattr,removexattr,lremovexattr,chdir")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")


@dataclass
class Case:
    """One hostile peer: ``run(source_address)`` returns what the node answered;
    ``expect`` checks the answer, ``log`` must match the node's log line about it."""

    name: str
    run: Callable[[str], Answer]
    expect: Callable[[Answer], bool]
    log: str
    source: str = ""
    answer: Answer | None = None
    error: str = ""
    seconds: float = 0.0


def status(code: int) -> Callable[[Answer], bool]:
    return lambda a: a.status == code


def aborted(a: Answer) -> bool:
    return a.aborted and a.closed_after is not None


def rejected(a: Answer) -> bool:
    return a.rejected and a.closed_after is not None


def closed_by_artim(a: Answer) -> bool:
    """Closed (no answer is due to a peer that never completed its A-ASSOCIATE-RQ)
    within the association timeout plus a generous margin."""
    return a.closed_after is not None and a.closed_after < ASSOCIATION_TIMEOUT + 10


def aborted_when_idle(a: Answer) -> bool:
    return a.aborted and a.closed_after is not None and IDLE_TIMEOUT - 1 < a.closed_after < IDLE_TIMEOUT + 15


@dataclass
class Scenario:
    port: int
    sample: Path                      # a valid MR instance (file)
    cases: list[Case] = field(default_factory=list)

    def __post_init__(self) -> None:
        ds = pydicom.dcmread(self.sample)
        self.ds = ds
        self.body = encode(ds, True, True)               # the data set as a C-STORE carries it
        self.file = self.sample.read_bytes()

    # -- helpers -------------------------------------------------------------------------------
    def raw(self, payload: bytes, then_close: bool = False, timeout: float = ASSOCIATION_TIMEOUT + 15):
        def run(source: str) -> Answer:
            sock = connect_from(source, self.port)
            try:
                if payload:
                    sock.sendall(payload)
                if then_close:
                    sock.shutdown(socket.SHUT_WR)
                return read_answer(sock, timeout)
            finally:
                sock.close()
        return run

    def associated(self, payload: bytes, then_close: bool = False, timeout: float = IDLE_TIMEOUT + 20):
        def run(source: str) -> Answer:
            assoc = RawAssociation(self.port, source)
            try:
                if payload:
                    assoc.send(payload)
                if then_close:
                    assoc.sock.shutdown(socket.SHUT_WR)
                return read_answer(assoc.sock, timeout)
            finally:
                assoc.sock.close()
        return run

    def store(self, data_set: bytes | Callable[[], bytes], sop: str | bytes | None = None, sop_class: str = MR):
        sop = str(self.ds.SOPInstanceUID) if sop is None else sop

        def run(source: str) -> Answer:
            assoc = RawAssociation(self.port, source)
            try:
                body = data_set() if callable(data_set) else data_set
                return assoc.c_store(sop_class, sop, body)
            finally:
                assoc.release()
        return run

    def with_uids(self, **uids: str) -> bytes:
        ds = copy.deepcopy(self.ds)
        for keyword, value in uids.items():
            setattr(ds, keyword, value)
        return encode(ds, True, True)

    def add(self, name: str, run: Callable[[str], Answer], expect: Callable[[Answer], bool], log: str) -> None:
        self.cases.append(Case(name, run, expect, log))

    # -- the cases -------------------------------------------------------------------------------
    def build(self) -> "Scenario":
        rq = associate_rq(calling="HOSTILE")
        sop = str(self.ds.SOPInstanceUID)
        long_uid = ".".join(["1"] * 500)
        nul_uid = "1.2.3\x00/../../tmp/hops-hostile"
        refused = r"refused an instance from HOSTILE \({ip}\) to ProcQA: .*{what}.*\(status 0x{code}\)"

        # C-STORE data sets that are not what they should be
        self.add("DICOM file (with preamble) as the data set", self.store(self.file),
                 status(0xC210), refused.format(ip="{ip}", what="", code="C210"))
        self.add("garbage preamble", self.store(lambda: os.urandom(128) + self.file[128:]),
                 status(0xC210), refused.format(ip="{ip}", what="", code="C210"))
        self.add("file without preamble (DICM + meta)", self.store(self.file[128:]),
                 status(0xC210), refused.format(ip="{ip}", what="", code="C210"))
        self.add("file meta group without DICM", self.store(self.file[132:]),
                 status(0xC210), refused.format(ip="{ip}", what="File Meta Information", code="C210"))
        self.add("data set cut in its pixel data", self.store(self.body[:len(self.body) // 2]),
                 status(0xC210), refused.format(ip="{ip}", what="ends inside", code="C210"))
        self.add("data set 3 bytes short", self.store(self.body[:-3]),
                 status(0xC210), refused.format(ip="{ip}", what="ends inside", code="C210"))
        self.add("element length beyond the data set", self.store(
            self.body[:4] + struct.pack("<I", 0x7FFFFFF0) + self.body[8:]),
            status(0xC210), refused.format(ip="{ip}", what="", code="C210"))
        self.add("random bytes", self.store(lambda: os.urandom(4000)),
                 status(0xC210), refused.format(ip="{ip}", what="", code="C210"))
        self.add("empty data set", self.store(b""), status(0xC210), refused.format(ip="{ip}", what="", code="C210"))
        # path-like UIDs
        self.add("Study UID ../../etc", self.store(self.with_uids(StudyInstanceUID="../../etc")),
                 status(0xC220), refused.format(ip="{ip}", what="Study Instance UID", code="C220"))
        self.add("Series UID /abs/path", self.store(self.with_uids(SeriesInstanceUID="/abs/path")),
                 status(0xC220), refused.format(ip="{ip}", what="Series Instance UID", code="C220"))
        self.add("SOP UID 1.2.3/../../x", self.store(self.with_uids(SOPInstanceUID="1.2.3/../../x"),
                                                     sop="1.2.3/../../x"),
                 status(0xC220), refused.format(ip="{ip}", what="SOP Instance UID", code="C220"))
        self.add("SOP UID of 999 characters", self.store(self.with_uids(SOPInstanceUID=long_uid), sop=long_uid),
                 status(0xC220), refused.format(ip="{ip}", what="longer than 64", code="C220"))
        self.add("SOP UID with a NUL byte", self.store(self.with_uids(SOPInstanceUID=nul_uid), sop=nul_uid),
                 status(0xC220), refused.format(ip="{ip}", what="SOP Instance UID", code="C220"))
        self.add("command SOP UID ../../etc/passwd", self.store(self.body, sop="../../etc/passwd"),
                 status(0xC220), refused.format(ip="{ip}", what="Affected SOP Instance UID", code="C220"))
        self.add("command SOP class ../../etc", self.store(self.body, sop_class="../../etc"),
                 status(0x0122), r"C-STORE-RQ from {ip} .*SOP class.*status 0x0122")
        # before an association
        self.add("silent connection", self.raw(b""), closed_by_artim,
                 r"connection from {ip} closed: no complete A-ASSOCIATE-RQ within 3 s")
        self.add("A-ASSOCIATE-RQ cut short, then silence", self.raw(rq[:50]), closed_by_artim,
                 r"connection from {ip} closed: no complete A-ASSOCIATE-RQ within 3 s")
        self.add("A-ASSOCIATE-RQ cut short, then close", self.raw(rq[:50], then_close=True),
                 lambda a: a.closed_after is not None and a.closed_after < 5,
                 r"connection from {ip} closed inside an A-ASSOCIATE-RQ PDU")
        self.add("A-ASSOCIATE-RQ of 4 GiB", self.raw(b"\x01\x00\xff\xff\xff\xff"), aborted,
                 r"connection from {ip}: A-ASSOCIATE-RQ PDU of 4294967295 bytes")
        self.add("A-ASSOCIATE-RQ of 0 bytes", self.raw(b"\x01\x00" + bytes(4)), aborted,
                 r"connection from {ip}: malformed A-ASSOCIATE-RQ PDU")
        self.add("A-RELEASE-RQ of 4 GiB", self.raw(b"\x05\x00\xff\xff\xff\xff"), aborted,
                 r"connection from {ip}: unexpected A-RELEASE-RQ PDU before an association")
        for pdu_type in (0x00, 0x08, 0xFF):
            self.add(f"unknown PDU type 0x{pdu_type:02X}", self.raw(bytes([pdu_type, 0]) + struct.pack(">I", 4) + b"abcd"),
                     aborted, rf"connection from {{ip}}: unknown PDU type 0x{pdu_type:02X}")
        self.add("HTTP request", self.raw(b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"), aborted,
                 r"connection from {ip}: unknown PDU type 0x47")
        self.add("TLS ClientHello", self.raw(bytes.fromhex("16030100a5010000a10303") + bytes(160)), aborted,
                 r"connection from {ip}: unknown PDU type 0x16")
        self.add("A-ASSOCIATE-AC sent to the node", self.raw(b"\x02" + rq[1:]), aborted,
                 r"connection from {ip}: unexpected A-ASSOCIATE-AC PDU")
        self.add("P-DATA-TF before an association", self.raw(p_data(1, 3, c_store_command(MR, sop))), aborted,
                 r"connection from {ip}: unexpected P-DATA-TF PDU")
        self.add("A-RELEASE-RQ before an association", self.raw(b"\x05\x00" + struct.pack(">I", 4) + bytes(4)),
                 aborted, r"connection from {ip}: unexpected A-RELEASE-RQ PDU")
        self.add("called AE title ../../etc", self.raw(associate_rq(called="../../etc", calling="HOSTILE")), rejected,
                 r"rejected association from HOSTILE \({ip}\) to \.\./\.\./etc")
        # during an association
        self.add("silent association", self.associated(b""), aborted_when_idle,
                 r"association from {ip}: nothing received for 6 s \(dicom.idle_timeout\)")
        self.add("P-DATA-TF cut short, then silence",
                 self.associated(p_data(1, 3, c_store_command(MR, sop))[:30]), aborted_when_idle,
                 r"association from {ip}: .*6 s .*inside a P-DATA-TF PDU")
        self.add("data set cut short, then close", self.associated(
            p_data(1, 3, c_store_command(MR, sop)) + p_data(1, 0, self.body[:4000])[:3000], then_close=True),
            lambda a: a.closed_after is not None and a.closed_after < 5,
            r"association from {ip} closed inside a P-DATA-TF PDU")
        self.add("P-DATA-TF of 2 GiB", self.associated(b"\x04\x00\x7f\xff\xff\xff"), aborted,
                 r"association from {ip}: P-DATA-TF PDU of 2147483647 bytes")
        self.add("P-DATA-TF without a PDV", self.associated(b"\x04\x00" + bytes(4)), aborted,
                 r"association from {ip}: .*P-DATA-TF.*no PDV")
        self.add("PDV longer than its PDU", self.associated(
            b"\x04\x00" + struct.pack(">I", 20) + struct.pack(">I", 1000) + b"\x01\x03" + bytes(14)), aborted,
            r"association from {ip}: .*PDV item of 1000 bytes")
        self.add("PDV of 4 GiB", self.associated(
            b"\x04\x00" + struct.pack(">I", 10) + struct.pack(">I", 0xFFFFFFFF) + b"\x01\x03" + bytes(4)), aborted,
            r"association from {ip}: .*PDV item of 4294967295 bytes")
        self.add("PDV of 0 bytes", self.associated(b"\x04\x00" + struct.pack(">I", 6) + bytes(4) + b"\x01\x03"),
                 aborted, r"association from {ip}: .*PDV item of 0 bytes")
        self.add("P-DATA-TF with only a PDV length", self.associated(b"\x04\x00" + struct.pack(">I", 4) + bytes(4)),
                 aborted, r"association from {ip}: .*P-DATA-TF of 4 bytes with no PDV")
        self.add("PDV for presentation context 99", self.associated(p_data(99, 3, c_store_command(MR, sop))),
                 aborted, r"association from {ip}: .*presentation context 99")
        self.add("second A-ASSOCIATE-RQ", self.associated(rq), aborted,
                 r"association from {ip}: unexpected A-ASSOCIATE-RQ PDU")
        self.add("unknown PDU type 0x08 in an association", self.associated(b"\x08\x00" + struct.pack(">I", 4) + b"abc"),
                 aborted, r"association from {ip}: unknown PDU type 0x08")
        for n, case in enumerate(self.cases):
            case.source = f"127.0.{40 + n // 200}.{n % 200 + 10}"
        return self


def run_case(case: Case) -> Case:
    started = time.monotonic()
    try:
        case.answer = case.run(case.source)
    except Exception as exc:  # noqa: BLE001 - reported with the case
        case.error = f"{type(exc).__name__}: {exc}"
    case.seconds = time.monotonic() - started
    return case


class TracedNode(MagickboxProcess):
    """``magickbox serve`` under ``strace -ff`` (stopped by signalling the node itself:
    strace blocks fatal signals while it runs a program)."""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:
            os.kill(int(pid), sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            for pid in pids:
                os.kill(int(pid), signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc


_SYSCALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>-?\d+|\?)")
_PATH_ARG = re.compile(r'(?:(?P<dirfd>AT_FDCWD|\d+)(?:<(?P<dirpath>[^>]*)>)?, )?"(?P<path>(?:[^"\\]|\\.)*)"')


def file_system_changes(trace_dir: Path, cwd: Path) -> list[tuple[str, str, str]]:
    """(syscall, absolute path, result) of every call in the strace files that changes the
    file system or could (opens for writing included, failed ones too)."""
    changes = []
    for trace in sorted(trace_dir.glob("trace.*")):
        for line in trace.read_text(errors="replace").splitlines():
            m = _SYSCALL.match(line)
            if not m:
                continue
            name, args = m.group("name"), m.group("args")
            if name in ("open", "openat", "openat2") and not any(f in args for f in _WRITE_FLAGS):
                continue
            paths = list(_PATH_ARG.finditer(args))
            if name in ("link", "linkat", "symlink", "symlinkat"):
                paths = paths[-1:]          # only the new name is a change (the source is read)
            for p in paths:
                path = p.group("path")
                base = p.group("dirpath") or str(cwd)
                changes.append((name, os.path.normpath(os.path.join(base, path)), m.group("result")))
    return changes


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if not p.is_symlink()}


def test_hostile_peers_while_a_scanner_keeps_sending(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    watched = tmp_path / "watched"                   # the node's cwd, TMPDIR and HOME
    (watched / "tmp").mkdir(parents=True)
    (watched / "home").mkdir()
    trace_dir = tmp_path / "strace"
    trace_dir.mkdir()
    env = dict(os.environ, TMPDIR=str(watched / "tmp"), HOME=str(watched / "home"), PYTHONDONTWRITEBYTECODE="1")
    node = TracedNode(data, quiet_seconds=0.5, env=env, cwd=watched,
                      wrapper=["strace", "-ff", "-qq", "-y", "--seccomp-bpf", "-e", f"trace={WRITE_SYSCALLS}",
                               "-o", str(trace_dir / "trace")],
                      config={"data_dir": str(data), "worker": {"enabled": False},
                              "dicom": {"association_timeout": ASSOCIATION_TIMEOUT, "idle_timeout": IDLE_TIMEOUT}})
    scenario = Scenario(0, make_study(tmp_path / "sample", 1)[0])
    studies = [make_study(tmp_path / f"study{n}", 10) for n in range(4)]
    watched_before = tree(watched)
    node.start()
    scenario.port = node.dicom_port
    scenario.build()
    sends: list[tuple[int, float]] = []
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(run_case, case) for case in scenario.cases]
            time.sleep(0.5)
            for files in studies[:3]:                # the scanner, while the hostile peers are at it
                started = time.monotonic()
                proc = storescu(node.dicom_port, "ProcQA", files, check=False, timeout=120)
                sends.append((proc.returncode, time.monotonic() - started))
            cases = [f.result(timeout=120) for f in futures]
        echo = subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1", str(node.dicom_port)],
                              capture_output=True, text=True, timeout=30)
        after = storescu(node.dicom_port, "ProcQA", studies[3], check=False, timeout=120)
        jobs = node.wait_jobs(4, timeout=60)
        time.sleep(1.0)
        alive = node.proc.poll() is None
        archived = {p.name: p for p in node.archived()}
        leftovers = list((data / "tmp").iterdir())
    finally:
        node.stop()
    log = node.log()
    print("\n" + "\n".join(f"{c.name:45} {c.source:14} {c.seconds:5.1f} s  "
                           f"{c.answer.describe() if c.answer else c.error}" for c in cases))
    print(f"scanner studies: {[(rc, round(s, 1)) for rc, s in sends]}")

    # the scanner was never stopped: every study acknowledged, archived byte for byte, one job each
    assert [rc for rc, _ in sends] == [0, 0, 0], sends
    assert echo.returncode == 0 and after.returncode == 0, echo.stderr + after.stderr
    assert alive, log[-3000:]
    expected = {}
    for files in studies:
        for f in files:
            expected[f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm"] = f
    assert set(archived) == set(expected), "archived something else than the scanner's instances"
    for name, src in expected.items():
        assert dataset_bytes(archived[name]) == dataset_bytes(src)
    assert len(jobs) == 4 and sorted(j["instance_count"] for j in jobs) == [10] * 4, jobs
    assert leftovers == [], leftovers                # no spool or partial files left behind

    # every hostile case got a clear answer and one log line naming its peer
    problems = []
    lines = log.splitlines()
    for case in cases:
        if case.error or case.answer is None or not case.expect(case.answer):
            problems.append(f"{case.name}: {case.error or case.answer.describe()}")
        pattern = re.compile(case.log.format(ip=re.escape(case.source)) + r"(?!\d)")
        if not any(pattern.search(line) for line in lines):
            problems.append(f"{case.name}: no log line like {pattern.pattern!r}")
    assert not problems, "\n".join(problems) + "\n" + log[-6000:]
    assert "Traceback" not in log and "Warning:" not in log, log[-3000:]
    assert not [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|magickbox node ", line)], \
        "every log record is one line"

    # nothing was written outside the data directory
    changes = file_system_changes(trace_dir, watched)
    assert changes, "strace saw no file system change at all"
    root = str(data.resolve())
    outside = [c for c in changes if not (c[1] == root or c[1].startswith(root + os.sep))
               and c[1] not in ("/dev/null",)]
    assert not outside, f"the node changed files outside {root}: {outside[:20]}"
    assert not [c for c in changes if c[0] == "chdir"], "the node changed its working directory"
    assert tree(watched) == watched_before, "the node wrote into its cwd, TMPDIR or HOME"
    for target in ("/tmp/hops-hostile", "/etc/passwd.dcm", str(data / "etc"), str(data.parent / "etc")):
        assert not os.path.exists(target), target


def test_the_strace_audit_sees_a_write_outside_the_data_directory(tmp_path):
    """The audit above can fail: a process that creates, renames and removes files next to
    its data directory (relative to its cwd and by absolute path) is caught."""
    data, cwd, trace_dir = tmp_path / "data", tmp_path / "cwd", tmp_path / "strace"
    for d in (data, cwd, trace_dir):
        d.mkdir()
    script = ("import os; open('inside-cwd.txt', 'w').close(); os.rename('inside-cwd.txt', '../moved.txt');"
              f"open({str(data / 'ok.txt')!r}, 'w').close(); os.unlink('../moved.txt');"
              f"os.link({str(data / 'ok.txt')!r}, '../linked.txt')")
    subprocess.run(["strace", "-ff", "-qq", "-y", "--seccomp-bpf", "-e", f"trace={WRITE_SYSCALLS}", "-o",
                    str(trace_dir / "trace"), "python3", "-S", "-c", script], cwd=cwd, check=True, timeout=60)
    changes = file_system_changes(trace_dir, cwd)
    paths = {path for _, path, _ in changes}
    assert str(cwd / "inside-cwd.txt") in paths and str(tmp_path / "moved.txt") in paths
    assert str(data / "ok.txt") in paths
    assert ("unlink", str(tmp_path / "moved.txt"), "0") in changes
    assert [path for name, path, _ in changes if name.startswith("link")] == [str(tmp_path / "linked.txt")]


def test_check_complete_accepts_every_valid_data_set_and_refuses_every_cut_one():
    """The completeness check must never refuse a real data set: every file pydicom ships
    (implicit/explicit VR, big endian, sequences of undefined length, encapsulated JPEG,
    JPEG-LS, JPEG 2000, RLE pixel data) passes as its C-STORE data set; cut by one byte
    or five bytes, each is refused; one sent in the other little endian VR encoding passes."""
    import glob

    from pydicom.data import get_testdata_file

    from magickbox.dicomio import HeaderError, check_complete
    checked = 0
    for path in sorted(glob.glob(str(Path(get_testdata_file("MR_small.dcm")).parent / "*.dcm"))):
        try:
            ds = pydicom.dcmread(path)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            if syntax == "1.2.840.10008.1.2.1.99":
                continue
            body = encode(ds, syntax == "1.2.840.10008.1.2", syntax != "1.2.840.10008.1.2.2")
        except Exception:  # noqa: BLE001 - files pydicom itself cannot re-encode are not data sets we get
            continue
        if body is None or len(body) < 16:
            continue
        check_complete(body, syntax)
        for cut in (body[:-1], body[:-5]):            # inside the last element (a cut between two
            #                                         elements is a shorter data set, not a broken one)
            try:
                check_complete(cut, syntax)
            except HeaderError:
                continue
            raise AssertionError(f"{Path(path).name}: a cut data set passed")
        checked += 1
    assert checked > 50, checked
    explicit = encode(pydicom.dcmread(get_testdata_file("MR_small.dcm")), False, True)
    check_complete(explicit, "1.2.840.10008.1.2")            # explicit VR sent on an implicit VR context


FUZZ_DATA_SETS = int(os.environ.get("HOPS_DICOM_FUZZ_CASES", "150"))
ANSWERABLE = {0x0000, 0xC210, 0xC220, 0xC221}


def mutate_data_set(body: bytes, rng) -> bytes:
    """A randomly damaged data set: flipped bytes, a corrupted length field, a cut, an
    inserted element header, a duplicated or dropped span."""
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        at = rng.randrange(len(data)) if data else 0
        if kind == 0:
            data[at] = rng.randrange(256)
        elif kind == 1:                              # a length field somewhere in the header
            at = rng.randrange(min(len(data), 2000)) & ~3
            data[at:at + 4] = struct.pack("<I", rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 20)]))
        elif kind == 2:
            del data[at:]
        elif kind == 3:
            data[at:at] = struct.pack("<HHI", rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 12))
        elif kind == 4:
            data[at:at] = data[at:at + rng.randrange(1, 200)]
        else:
            del data[at:at + rng.randrange(1, 200)]
    return bytes(data)


@pytest.mark.timeout(600 + FUZZ_DATA_SETS)
def test_randomly_damaged_data_sets_over_the_wire_get_a_status(tmp_path):
    """HOPS_DICOM_FUZZ_CASES (default 150) damaged data sets on one association: each gets a
    C-STORE status (never an abort, never silence), the node's log has no traceback, only
    data sets that still walk to their end are archived, and a scanner's study still goes in."""
    import random
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    node = MagickboxProcess(data, quiet_seconds=0.5, config={"data_dir": str(data), "worker": {"enabled": False}})
    rng = random.Random(int(os.environ.get("HOPS_DICOM_FUZZ_SEED", "11")))
    sample = pydicom.dcmread(make_study(tmp_path / "sample", 1)[0])
    statuses: dict[int, int] = {}
    problems = []
    node.start()
    try:
        assoc = RawAssociation(node.dicom_port, "127.0.60.1")
        for n in range(FUZZ_DATA_SETS):
            ds = copy.deepcopy(sample)
            ds.SOPInstanceUID = f"{sample.SOPInstanceUID}.{n + 1}"[:64]
            damaged = mutate_data_set(encode(ds, True, True), rng)
            answer = assoc.c_store(MR, str(ds.SOPInstanceUID), damaged, timeout=30)
            if answer.status not in ANSWERABLE or answer.aborted or answer.closed_after is not None:
                problems.append(f"case {n}: {answer.describe()}")
                assoc = RawAssociation(node.dicom_port, "127.0.60.1")
            else:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
        assoc.release()
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "after", 3))
        archived = node.archived()
    finally:
        node.stop()
    print(f"\n{FUZZ_DATA_SETS} damaged data sets: " + ", ".join(f"0x{k:04X}: {v}" for k, v in sorted(statuses.items())))
    assert not problems, problems[:10]
    assert statuses.get(0xC210, 0) > 10, statuses             # the damage is mostly noticed
    from magickbox.dicomio import check_complete
    for path in archived:                                      # what was taken walks to its end
        with open(path, "rb") as fh:
            meta = pydicom.dcmread(fh, stop_before_pixels=True)
        check_complete(path.read_bytes()[132 + 12 + meta.file_meta.FileMetaInformationGroupLength:],
                       str(meta.file_meta.TransferSyntaxUID))
    log = node.log()
    assert "Traceback" not in log and "Warning:" not in log, log[-3000:]
