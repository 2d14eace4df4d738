"""``magickbox serve`` against hostile and broken peers, over real sockets and with dcmtk:
stalled and silent connections, connection floods, PDU length fields that would allocate
without bound, unknown PDU types, C-STORE requests without a SOP Instance UID, log
injection through AE titles, the status API's edge cases and file permissions."""
from __future__ import annotations

import os
import re
import socket
import stat
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path

import pydicom
from dicom_helpers import MagickboxProcess, associate_rq, dataset_bytes, make_study, storescu, write_bucket

#: documented bound (README, "Hostile peers") for what the flood of
#: test_flood_of_stalled_and_silent_peers_and_a_4gb_pdu adds to the idle node's RSS while
#: a study arrives (spool memory budget 16 MB + 32 pending connections x 1 MiB + slack)
RSS_GROWTH_BOUND_MB = 60

A_ABORT_PREFIX = b"\x07\x00\x00\x00\x00\x04"


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to the node from a chosen loopback source address (every
    127.x.y.z is loopback on Linux, so tests can play many different peers)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """(bytes received, seconds) until the peer closed the connection or ``timeout``."""
    started = time.monotonic()
    data = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def is_closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    _, elapsed = read_until_closed(sock, timeout)
    return elapsed < timeout


def closed_now(sock: socket.socket) -> bool:
    """Whether the node has closed this connection (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def current_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def node_with(tmp_path: Path, dicom: dict | None = None, **config) -> MagickboxProcess:
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    cfg = {"data_dir": str(data), "worker": {"enabled": False}, **config}
    if dicom:
        cfg["dicom"] = dicom
    return MagickboxProcess(data, quiet_seconds=0.5, config=cfg)


class FloodSender(threading.Thread):
    """Sends a PDU header claiming ``length`` bytes, then streams zeros until the node
    closes the connection or ``limit`` bytes are sent; keeps what the node answered."""

    def __init__(self, sock: socket.socket, header: bytes, limit: int):
        super().__init__(daemon=True)
        self.sock, self.header, self.limit = sock, header, limit
        self.sent = 0
        self.answer = b""

    def run(self) -> None:
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        chunk = b"\x00" * (1 << 20)
        try:
            self.sock.sendall(self.header)
            while self.sent < self.limit:
                self.sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass
        reader.join(15)

    def _read(self) -> None:
        self.answer, _ = read_until_closed(self.sock, 15)


# -- 1./2. stalled, silent and flooding peers ---------------------------------------------
def test_flood_of_stalled_and_silent_peers_and_a_4gb_pdu_do_not_stop_a_scanner(tmp_path):
    """The issue's acceptance scenario, with the node's default settings: 64 connections
    that sent the first 40 bytes of an A-ASSOCIATE-RQ and 64 that sent nothing (each from
    its own address, so no per-address bound helps) stay open, and a PDU claiming 4 GB
    arrives; a dcmtk storescu study still completes and the node's RSS stays bounded."""
    node = node_with(tmp_path).start()
    hostile: list[socket.socket] = []
    try:
        baseline = current_rss_mb(node.proc.pid)
        rq = associate_rq()
        for i in range(64):
            sock = connect_from(f"127.0.1.{i + 1}", node.dicom_port)
            sock.sendall(rq[:40])
            hostile.append(sock)
        for i in range(64):
            hostile.append(connect_from(f"127.0.2.{i + 1}", node.dicom_port))
        flood = FloodSender(connect_from("127.0.3.1", node.dicom_port), b"\x01\x00\xff\xff\xff\xf0", 300 << 20)
        flood.start()
        time.sleep(0.5)
        during = node.api("/api/health")["dicom_connections"]
        files = make_study(tmp_path / "study", 20)
        started = time.monotonic()
        storescu(node.dicom_port, "ProcQA", files, timeout=120)
        elapsed = time.monotonic() - started
        flood.join(30)
        peak = peak_rss_mb(node.proc.pid)
        archived = {p.name: p for p in node.archived()}
        jobs = node.wait_jobs(1, timeout=60)
    finally:
        for sock in hostile:
            sock.close()
        node.stop()
    assert elapsed < 60, elapsed
    assert len(archived) == 20
    for src in files:
        sop = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(archived[f"{sop}.dcm"]) == dataset_bytes(src)
    assert jobs[0]["instance_count"] == 20
    assert flood.answer.startswith(A_ABORT_PREFIX), flood.answer[:20]
    assert flood.sent < 64 << 20, f"the node read {flood.sent >> 20} MiB of a PDU it should have refused"
    print(f"peak RSS {peak:.0f} MB (baseline {baseline:.0f} MB), flood sent {flood.sent >> 20} MiB, "
          f"study in {elapsed:.1f} s")
    assert peak - baseline < RSS_GROWTH_BOUND_MB, f"peak RSS {peak:.0f} MB (baseline {baseline:.0f} MB)"
    assert during["pending"] == 32 and during["associated"] == 0, during     # the pool kept its bound
    log = node.log()
    assert "PDU of 4294967280 bytes" in log and "A-ABORT" in log


def test_incomplete_associations_time_out_even_when_dribbling(tmp_path):
    """ARTIM-like: a connection must deliver its whole A-ASSOCIATE-RQ within
    dicom.association_timeout, however slowly it sends."""
    node = node_with(tmp_path, dicom={"association_timeout": 2}).start()
    try:
        silent = connect_from("127.0.4.1", node.dicom_port)
        stalled = connect_from("127.0.4.2", node.dicom_port)
        stalled.sendall(associate_rq()[:40])
        dribbler = connect_from("127.0.4.3", node.dicom_port)
        rq = associate_rq()
        stop = threading.Event()

        def dribble() -> None:
            for i in range(len(rq)):
                if stop.wait(0.3):
                    return
                try:
                    dribbler.send(rq[i:i + 1])
                except OSError:
                    return
        threading.Thread(target=dribble, daemon=True).start()
        results = {}
        threads = [threading.Thread(target=lambda n=n, s=s: results.__setitem__(n, read_until_closed(s, 15)[1]))
                   for n, s in (("silent", silent), ("stalled", stalled), ("dribbler", dribbler))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1", str(node.dicom_port)],
                       check=True, capture_output=True, timeout=30)
    finally:
        node.stop()
    for name, seconds in results.items():
        assert 1.5 < seconds < 6, f"{name}: closed after {seconds:.1f} s (association_timeout 2 s)"


def test_connections_per_address_are_bounded(tmp_path):
    """Default dicom.max_connections_per_address = 16: the 17th connection from one
    address is closed at once; other addresses are not affected."""
    node = node_with(tmp_path).start()
    sockets = []
    try:
        for _ in range(20):
            sockets.append(connect_from("127.0.5.1", node.dicom_port))
        time.sleep(1.5)
        closed = [closed_now(s) for s in sockets]
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "s", 3))     # from 127.0.0.1
    finally:
        for s in sockets:
            s.close()
        node.stop()
    assert closed.count(False) == 16 and closed.count(True) == 4, closed
    assert len(node.archived()) == 3
    refusals = [line for line in node.log().splitlines() if "127.0.5.1" in line and "per address" in line]
    assert len(refusals) == 1, refusals                        # rate-limited: one line for the burst


def test_pdu_longer_than_negotiated_is_aborted_before_it_is_read(tmp_path):
    """After negotiation a P-DATA-TF longer than the node's maximum PDU (131072) gets an
    A-ABORT at once; a 500 MiB length field must not make the node buffer anything."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage
    node = node_with(tmp_path).start()
    try:
        before = current_rss_mb(node.proc.pid)
        answers = []
        for length in (131072 + 1, 500 << 20):
            ae = AE(ae_title="SCANNER")
            ae.add_requested_context(MRImageStorage)
            assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="ProcQA")
            assert assoc.is_established and assoc.acceptor.maximum_length == 131072
            sock = assoc.dul.socket.socket
            assoc.dul.kill_dul()                       # from here on we speak raw bytes
            time.sleep(0.2)
            flood = FloodSender(sock, b"\x04\x00" + struct.pack(">I", length), 200 << 20)
            flood.start()
            flood.join(30)
            answers.append((flood.answer[:10], flood.sent))
        after = current_rss_mb(node.proc.pid)
        still_works = storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "s", 2))
    finally:
        node.stop()
    for answer, sent in answers:
        assert answer.startswith(A_ABORT_PREFIX), answer
        assert sent < 64 << 20, sent
    assert after - before < 30, f"RSS grew from {before:.0f} to {after:.0f} MB"
    assert still_works.returncode == 0


def test_endless_command_set_is_aborted(tmp_path):
    """Command fragments that never end would grow a buffer without bound: A-ABORT once
    the command set passes 64 KiB (real ones are a few hundred bytes)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    node = node_with(tmp_path).start()
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="ProcQA")
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        assoc.dul.kill_dul()
        time.sleep(0.2)
        fragment = b"\x00" * 60000
        pdv = struct.pack(">I", 2 + len(fragment)) + b"\x01\x01" + fragment    # context 1, command, not last
        pdu = b"\x04\x00" + struct.pack(">I", len(pdv)) + pdv
        try:
            for _ in range(4):
                sock.sendall(pdu)
        except OSError:
            pass
        answer, seconds = read_until_closed(sock, 10)
    finally:
        node.stop()
    assert answer.startswith(A_ABORT_PREFIX) and seconds < 5, (answer[:20], seconds)
    assert "DIMSE command set longer than 65536 bytes" in node.log()


def test_unknown_pdu_type_gets_an_a_abort_before_and_after_association(tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    node = node_with(tmp_path).start()
    try:
        early = connect_from("127.0.6.1", node.dicom_port)
        early.sendall(b"\x08\x00" + struct.pack(">I", 4) + b"abcd")
        early_answer, early_seconds = read_until_closed(early, 10)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="ProcQA")
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        assoc.dul.kill_dul()
        time.sleep(0.2)
        sock.sendall(b"\x08\x00" + struct.pack(">I", 4) + b"abc")       # even one byte short
        late_answer, late_seconds = read_until_closed(sock, 10)
    finally:
        node.stop()
    assert early_answer.startswith(A_ABORT_PREFIX) and early_seconds < 5, (early_answer, early_seconds)
    assert late_answer.startswith(A_ABORT_PREFIX) and late_seconds < 5, (late_answer, late_seconds)
    assert node.log().count("unknown PDU type 0x08") == 2


def test_c_store_without_affected_sop_instance_uid_is_answered(tmp_path):
    from pynetdicom import AE
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.sop_class import MRImageStorage
    node = node_with(tmp_path).start()
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2"])
        ae.dimse_timeout = 20
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="ProcQA")
        assert assoc.is_established
        ds = pydicom.dcmread(make_study(tmp_path / "s", 1)[0])
        from pynetdicom.dsutils import encode
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = MRImageStorage
        request.Priority = 2
        request.DataSet = BytesIO(encode(ds, True, True))
        context_id = assoc._get_valid_context(MRImageStorage, "", "scu").context_id
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        started = time.monotonic()
        try:
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        seconds = time.monotonic() - started
        assoc.release()
    finally:
        node.stop()
    assert response is not None, "no C-STORE-RSP"
    assert response.MessageIDBeingRespondedTo == 7 and response.Status == 0xC220, response
    assert seconds < 10
    assert node.archived() == []
    assert not list((node.data_dir / "tmp").iterdir())


def test_silent_tls_peer_does_not_block_the_listener(tmp_path):
    """The TLS handshake happens in the connection's own thread, under the association
    timeout: a peer that connects and never starts TLS blocks nobody."""
    key, cert = tmp_path / "node.key", tmp_path / "node.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    node = node_with(tmp_path, dicom={"tls": {"cert": str(cert), "key": str(key)}}).start()
    try:
        silent = connect_from("127.0.7.1", node.dicom_port)
        started = time.monotonic()
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "t", 2), extra=["+tla", "-ic"], timeout=60)
        sent_in = time.monotonic() - started
        silent_closed = is_closed_by_peer(silent, 15)          # default association_timeout: 10 s
    finally:
        node.stop()
    assert sent_in < 3, f"storescu waited {sent_in:.1f} s behind a silent TLS peer"
    assert silent_closed and len(node.archived()) == 2


def test_received_data_sets_share_one_memory_budget(tmp_path):
    """Data sets being received are kept in memory only while all of them together fit
    dicom.spool_memory_mb; beyond that they are spooled to (private) files."""
    from magickbox.store import FILE_MODE, SpoolBudget, SpoolBuffer
    budget = SpoolBudget(3 << 20)
    first, second = SpoolBuffer(tmp_path, 16 << 20, budget), SpoolBuffer(tmp_path, 16 << 20, budget)
    first.write(b"a" * (2 << 20))
    second.write(b"b" * (2 << 20))                  # would exceed the shared 3 MiB
    assert not first.spilled and second.spilled and budget.used == 2 << 20
    assert stat.S_IMODE(second.path.stat().st_mode) == FILE_MODE
    assert second.getvalue() == b"b" * (2 << 20)
    first.discard()
    second.discard()
    assert budget.used == 0 and list(tmp_path.iterdir()) == []


# -- 11. log injection and one line per event ------------------------------------------------
def test_ae_titles_and_malformed_pdus_log_one_sanitised_line(tmp_path):
    node = node_with(tmp_path).start()
    try:
        hostile_titles = [b"EV\nIL 2026 ERROR", b"\x1b[31mRED\x1b[0m", b"C1\x9b31mX"]
        for n, title in enumerate(hostile_titles):
            sock = connect_from(f"127.0.8.{n + 1}", node.dicom_port)
            sock.sendall(associate_rq(calling_raw=title))
            read_until_closed(sock, 5)
            sock.close()
        # a PDU that does not decode (an A-ASSOCIATE-RQ with a broken item length)
        broken = bytearray(associate_rq())
        broken[76:78] = b"\xff\xff"
        sock = connect_from("127.0.8.9", node.dicom_port)
        sock.sendall(bytes(broken))
        read_until_closed(sock, 5)
        sock.close()
        subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1", str(node.dicom_port)],
                       check=True, capture_output=True, timeout=30)
    finally:
        node.stop()
    raw = node.log_path.read_bytes()
    text = raw.decode("utf-8")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", text), "control characters in the log"
    assert "Traceback" not in text
    lines = text.splitlines()
    # every line is a log record (starts with a time stamp) or the start-up banner
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|magickbox node ", line), repr(line)
    for n in range(3):                                        # one line per event
        assert len([line for line in lines if f"127.0.8.{n + 1}" in line]) == 1, text
    assert "EV\\nIL 2026 ERROR" in text and "\\x1b[31mRED" in text
    assert len([line for line in lines if "127.0.8.9" in line]) == 1


# -- 10. the status API -----------------------------------------------------------------------
def test_status_api_edge_cases(tmp_path):
    node = node_with(tmp_path).start()
    try:
        base = f"http://127.0.0.1:{node.http_port}"

        def call(path: str, method: str = "GET") -> tuple[int, dict, bytes]:
            request = urllib.request.Request(base + path, method=method,
                                             headers={"Authorization": f"Bearer {node.token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()

        huge = call("/api/jobs/99999999999999999999999")
        negative = call("/api/jobs/-1")
        head = call("/api/health", "HEAD")
        get = call("/api/health")
        post = call("/api/health", "POST")
    finally:
        node.stop()
    assert huge[0] in (404, 422) and b'"error"' in huge[2], huge
    assert negative[0] in (404, 422)
    assert head[0] == 200 and head[2] == b"" and int(head[1]["content-length"]) == len(get[2]) > 0
    assert post[0] == 405 and "GET" in post[1].get("allow", ""), post
    assert "OverflowError" not in node.log() and "Traceback" not in node.log()


# -- 12. one permission policy for patient data ----------------------------------------------------
def test_everything_holding_patient_data_is_private(tmp_path):
    """Archive, spool and temporary files, series records (views/raw/*.json, with
    PatientName), job directories and the database: files 0640, directories 0750 —
    nothing readable by other users, whatever umask the node was started with."""
    data = tmp_path / "node"
    bucket = write_bucket(data / "buckets", "ProcQA", run={"runner": "process"})
    (bucket / "work.sh").write_text('#!/bin/sh\ncp -r "$1" "$2/copy"\n'
                                    'echo \'[{"success": "success"}]\' > "$2/proc.json"\n')
    (bucket / "work.sh").chmod(0o755)
    node = MagickboxProcess(data, quiet_seconds=0.5, config={"data_dir": str(data),
                                                              "dicom": {"spool_threshold_mb": 1}})
    old_umask = os.umask(0o002)                     # a permissive start-up environment
    try:
        node.start()
    finally:
        os.umask(old_umask)
    seen_part_modes: dict[str, int] = {}
    stop = threading.Event()

    def watch_tmp() -> None:
        while not stop.is_set():
            try:
                for entry in os.scandir(data / "tmp"):
                    if entry.name.endswith(".part"):
                        seen_part_modes.setdefault(entry.name, stat.S_IMODE(entry.stat().st_mode))
            except OSError:
                pass
            time.sleep(0.002)

    watcher = threading.Thread(target=watch_tmp, daemon=True)
    watcher.start()
    try:
        src = make_study(tmp_path / "l", 1, PatientName="Private^Patient")[0]
        ds = pydicom.dcmread(src)
        ds.Rows, ds.Columns = 5000, 5000
        ds.PixelData = os.urandom(5000 * 5000 * 2)
        ds.save_as(src)
        storescu(node.dicom_port, "ProcQA", [src, *make_study(tmp_path / "m", 3)])
        jobs = node.wait_jobs(2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(j["status"] == "success" for j in node.jobs()):
            time.sleep(0.2)
    finally:
        stop.set()
        watcher.join(5)
        node.stop()
    assert any(name.startswith("spool-") for name in seen_part_modes), seen_part_modes
    for name, mode in seen_part_modes.items():
        assert mode & 0o007 == 0, f"tmp/{name} was {oct(mode)}"
    records = list((data / "views" / "raw").rglob("*.json"))
    assert any("Private^Patient" in r.read_text() for r in records)
    checked = 0
    for path in [data, *data.rglob("*")]:
        if data / "buckets" in path.parents and "memory" not in path.parts or path == data / "buckets":
            continue                                  # bucket code, installed by the operator
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o007 == 0, f"{path.relative_to(data)} is {oct(mode)}"
        checked += 1
    assert checked > 20 and len(jobs) == 2


def test_deploy_config_sets_the_documented_defaults(tmp_path):
    """deploy/magickbox.toml names the hostile-peer settings with their defaults and
    gives the node's own AE title a storage allow-list."""
    from magickbox.config import DicomConfig, load_node_config
    config = load_node_config(Path(__file__).resolve().parents[1] / "deploy" / "magickbox.toml",
                              {"data_dir": str(tmp_path)})
    defaults = DicomConfig()
    for key in ("association_timeout", "idle_timeout", "max_associations", "max_pending_connections",
                "max_connections_per_address", "max_pdu", "spool_threshold_mb", "spool_memory_mb", "replace"):
        assert getattr(config.dicom, key) == getattr(defaults, key), key
    assert config.dicom.access["MAGICKBOX"].calling_ae_titles == ("PACS",)
