"""Sending DICOM files to another node: a storage SCU (C-STORE) and C-ECHO.

One association per call of :func:`send_files`, one synchronous C-STORE after another,
each file's status checked.  The upper layer (PS3.8) is spoken directly on a blocking
socket with ``TCP_NODELAY``: the association request and acceptance, P-DATA-TF PDUs,
release and abort.  That keeps the per-file cost near dcmtk's ``storescu``
(``benchmarks/bench_route.py`` prints the ratio) and keeps the sender free of
pynetdicom's threads and of the receiver's pynetdicom patches.

**Transfer syntaxes.**  For every (SOP class, transfer syntax) pair among the files, the
request proposes that pair as it is stored, plus one context for the same SOP class with
Explicit and Implicit VR Little Endian.  A file goes out byte for byte in its own transfer
syntax when the peer accepted it; only when the peer accepted nothing else is it
converted (decoded with pydicom and re-encoded little endian; a compressed file whose
pixel data pydicom cannot decompress fails with a message saying so).

**Results.**  :class:`SendReport` has one :class:`FileResult` per file: the DIMSE status
(``0x0000`` success, ``0xB000``-``0xB0FF`` warning, anything else failure) or the reason it
was not sent (not a DICOM Part 10 file, no accepted context, association lost).  Files
that are not DICOM Part 10 files are reported as ``skipped``, not as failures.

Failure modes: :class:`AssociationError` is never raised to the caller of
:func:`send_files`; a refused or broken association is recorded in
``SendReport.association_error`` and every file not acknowledged carries it.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = ["Destination", "FileResult", "SendReport", "AssociationError", "send_files", "echo",
           "read_part10_header", "Part10Header"]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
UNCOMPRESSED = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE)
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1345.1"
IMPLEMENTATION_VERSION = "HOPS_MAGICKBOX"
OUR_MAX_PDU = 262144
MAX_CONTEXTS = 128            # presentation context IDs are the odd numbers 1..255

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class AssociationError(Exception):
    """The association could not be made or broke (message says how, incl. the peer's
    reject/abort reason)."""


@dataclass(frozen=True)
class Destination:
    """A DICOM node to send to: ``host:port``, its AE title, and the AE title we use."""
    host: str
    port: int
    called_ae: str
    calling_ae: str = "MAGICKBOX"

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"


@dataclass
class FileResult:
    path: Path
    sop_instance_uid: str = ""
    status: int | None = None          # the peer's DIMSE status, None if not sent
    error: str = ""                    # why it was not sent or what the peer said
    skipped: bool = False              # not a DICOM Part 10 file: not an error
    converted_to: str = ""             # transfer syntax it was converted to, if it was

    @property
    def ok(self) -> bool:
        """Acknowledged with success or a warning status."""
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF
                                            or self.status == 0x0107 or self.status == 0x0116)


@dataclass
class SendReport:
    destination: Destination
    files: list[FileResult] = field(default_factory=list)
    association_error: str = ""
    seconds: float = 0.0

    @property
    def sent(self) -> list[FileResult]:
        return [f for f in self.files if f.ok]

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if not f.ok and not f.skipped]

    @property
    def ok(self) -> bool:
        """Every DICOM file acknowledged (an empty list of files is ok)."""
        return not self.association_error and not self.failed

    def summary(self) -> str:
        skipped = sum(f.skipped for f in self.files)
        text = f"{len(self.sent)} sent, {len(self.failed)} failed, {skipped} skipped to {self.destination}"
        return text + (f" ({self.association_error})" if self.association_error else "")


# -- DICOM Part 10 files ----------------------------------------------------------------------
@dataclass(frozen=True)
class Part10Header:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int                # where the data set starts in the file
    size: int                          # file size in bytes


def _uid_text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def read_part10_header(path: Path) -> Part10Header | None:
    """The File Meta Information of a DICOM Part 10 file (``None`` when the file has no
    ``DICM`` preamble or its meta group is malformed)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        values: dict[int, bytes] = {}
        pos = 132
        end: int | None = None
        while end is None or pos < end:
            raw = fh.read(8)
            if len(raw) < 8:
                return None
            group, elem = struct.unpack("<HH", raw[:4])
            if group != 0x0002:
                break
            vr = raw[4:6]
            if vr in _LONG_VRS:
                extra = fh.read(4)
                if len(extra) < 4:
                    return None
                length = struct.unpack("<I", extra)[0]
                header_len = 12
            else:
                length = struct.unpack("<H", raw[6:8])[0]
                header_len = 8
            if length > 1 << 16:
                return None
            value = fh.read(length)
            if len(value) < length:
                return None
            values[elem] = value
            if elem == 0x0000 and length == 4:
                end = pos + header_len + 4 + struct.unpack("<I", value)[0]
            pos += header_len + length
        if end is None:
            end = pos
        size = os.fstat(fh.fileno()).st_size
    try:
        return Part10Header(_uid_text(values[0x0002]), _uid_text(values[0x0003]), _uid_text(values[0x0010]),
                            end, size)
    except KeyError:
        return None


# -- upper layer PDUs -------------------------------------------------------------------------
def _ae(title: str) -> bytes:
    raw = title.encode("ascii", "replace")[:16]
    return raw.ljust(16, b" ")


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(payload)) + payload


def _associate_rq(called: str, calling: str, contexts: Sequence[tuple[int, str, Sequence[str]]]) -> bytes:
    body = struct.pack(">H2x", 1) + _ae(called) + _ae(calling) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        body += _item(0x20, struct.pack(">B3x", context_id) + sub)
    user = (_item(0x51, struct.pack(">I", OUR_MAX_PDU)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + _item(0x55, IMPLEMENTATION_VERSION.encode()))
    body += _item(0x50, user)
    return struct.pack(">BxI", 0x01, len(body)) + body


_REJECT_REASONS = {(1, 1): "no reason given", (1, 2): "application context name not supported",
                   (1, 3): "calling AE title not recognized", (1, 7): "called AE title not recognized",
                   (2, 1): "no reason given", (2, 2): "protocol version not supported",
                   (3, 1): "temporary congestion", (3, 2): "local limit exceeded"}


def _parse_associate_ac(body: bytes) -> tuple[dict[int, str | None], int]:
    """Accepted transfer syntax per presentation context ID (None = rejected) and the
    peer's maximum PDU length (0 = unlimited)."""
    accepted: dict[int, str | None] = {}
    max_pdu = 0
    pos = 68
    while pos + 4 <= len(body):
        item_type, length = body[pos], struct.unpack(">H", body[pos + 2:pos + 4])[0]
        payload = body[pos + 4:pos + 4 + length]
        if item_type == 0x21 and len(payload) >= 4:
            context_id, result = payload[0], payload[2]
            syntax = None
            sub = 4
            while sub + 4 <= len(payload):
                sub_type, sub_len = payload[sub], struct.unpack(">H", payload[sub + 2:sub + 4])[0]
                if sub_type == 0x40:
                    syntax = _uid_text(payload[sub + 4:sub + 4 + sub_len])
                sub += 4 + sub_len
            accepted[context_id] = syntax if result == 0 else None
        elif item_type == 0x50:
            sub = 0
            while sub + 4 <= len(payload):
                sub_type, sub_len = payload[sub], struct.unpack(">H", payload[sub + 2:sub + 4])[0]
                if sub_type == 0x51 and sub_len == 4:
                    max_pdu = struct.unpack(">I", payload[sub + 4:sub + 8])[0]
                sub += 4 + sub_len
        pos += 4 + length
    return accepted, max_pdu


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _command(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    return _command(_element(0x0000, 0x0002, _uid_value(sop_class)),
                    _element(0x0000, 0x0100, struct.pack("<H", 0x0001)),
                    _element(0x0000, 0x0110, struct.pack("<H", message_id)),
                    _element(0x0000, 0x0700, struct.pack("<H", 0)),
                    _element(0x0000, 0x0800, struct.pack("<H", 0x0000)),
                    _element(0x0000, 0x1000, _uid_value(sop_instance)))


def c_echo_rq(message_id: int) -> bytes:
    return _command(_element(0x0000, 0x0002, _uid_value(VERIFICATION)),
                    _element(0x0000, 0x0100, struct.pack("<H", 0x0030)),
                    _element(0x0000, 0x0110, struct.pack("<H", message_id)),
                    _element(0x0000, 0x0800, struct.pack("<H", 0x0101)))


def _parse_command(raw: bytes) -> dict[int, bytes]:
    values: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(raw):
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        values[(group << 16) | elem] = raw[pos + 8:pos + 8 + length]
        pos += 8 + length
    return values


class _Association:
    """A requested association on a blocking socket (one DIMSE operation at a time)."""

    def __init__(self, destination: Destination, contexts: Sequence[tuple[int, str, Sequence[str]]],
                 timeout: float):
        self.destination = destination
        self.timeout = timeout
        try:
            self.sock = socket.create_connection((destination.host, destination.port), timeout=timeout)
        except OSError as exc:
            raise AssociationError(f"cannot connect to {destination}: {exc.strerror or exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        try:
            self.sock.sendall(_associate_rq(destination.called_ae, destination.calling_ae, contexts))
            pdu_type, body = self._read_pdu()
        except AssociationError:
            self.sock.close()
            raise
        if pdu_type == 0x03 and len(body) >= 4:
            self.sock.close()
            result, source, reason = body[1], body[2], body[3]
            why = _REJECT_REASONS.get((source, reason), f"source {source} reason {reason}")
            kind = "permanently" if result == 1 else "transiently"
            raise AssociationError(f"{destination} rejected the association {kind}: {why}")
        if pdu_type != 0x02:
            self.sock.close()
            raise AssociationError(f"{destination} answered the association request with PDU type {pdu_type:#04x}")
        self.accepted, peer_max = _parse_associate_ac(body)
        # one PDV per PDU: 6 bytes of PDV header inside the PDU body
        self.max_fragment = (peer_max - 6) if peer_max and peer_max > 6 else 1 << 20
        self.max_fragment = min(self.max_fragment, 1 << 20)
        self.open = True

    # -- PDUs
    def _recv_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            try:
                chunk = self.sock.recv(max(65536, count - len(self._buffer)))
            except socket.timeout as exc:
                raise AssociationError(f"{self.destination} did not answer within {self.timeout:g} s") from exc
            except OSError as exc:
                raise AssociationError(f"connection to {self.destination} lost: {exc.strerror or exc}") from exc
            if not chunk:
                raise AssociationError(f"{self.destination} closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._recv_exact(6)
        pdu_type, length = header[0], struct.unpack(">I", header[2:6])[0]
        if length > 64 * 1024 * 1024:
            raise AssociationError(f"{self.destination} sent a PDU of {length} bytes")
        body = self._recv_exact(length)
        if pdu_type == 0x07:
            raise AssociationError(f"{self.destination} aborted the association "
                                   f"(source {body[2] if len(body) > 2 else '?'}, "
                                   f"reason {body[3] if len(body) > 3 else '?'})")
        return pdu_type, body

    def _send(self, data: bytes | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise AssociationError(f"connection to {self.destination} lost: {exc.strerror or exc}") from exc

    def _send_pdv(self, context_id: int, control: int, data: bytes) -> None:
        """One P-DATA-TF PDU holding one PDV (``control``: bit 0 command, bit 1 last fragment)."""
        pdv_len = len(data) + 2
        header = struct.pack(">BxIIBB", 0x04, pdv_len + 4, pdv_len, context_id, control)
        if len(data) < 16384:
            self._send(header + data)     # one segment for command sets and small fragments
        else:
            self._send(header)
            self._send(data)

    def send_message(self, context_id: int, command: bytes, dataset: Iterable[bytes] | None) -> None:
        """A DIMSE message: its command set, then the data set in fragments (if any)."""
        self._send_pdv(context_id, 0x03, command)
        if dataset is None:
            return
        pending: bytes | None = None
        for chunk in dataset:
            if pending is not None:
                self._send_pdv(context_id, 0x00, pending)
            pending = chunk
        self._send_pdv(context_id, 0x02, pending or b"")

    def read_response(self) -> dict[int, bytes]:
        """The next command set from the peer (data sets of responses are not expected)."""
        command = bytearray()
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type != 0x04:
                raise AssociationError(f"{self.destination} sent PDU type {pdu_type:#04x} instead of a response")
            pos = 0
            while pos + 6 <= len(body):
                length = struct.unpack(">I", body[pos:pos + 4])[0]
                control = body[pos + 5]
                data = body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    command += data
                    if control & 0x02:
                        return _parse_command(bytes(command))

    def release(self) -> None:
        if not self.open:
            return
        self.open = False
        try:
            self._send(struct.pack(">BxI", 0x05, 4) + bytes(4))
            pdu_type, _ = self._read_pdu()
        except AssociationError:
            pass
        finally:
            self.sock.close()

    def abort(self) -> None:
        if self.open:
            self.open = False
            try:
                self.sock.sendall(struct.pack(">BxI", 0x07, 4) + bytes(4))
            except OSError:
                pass
            self.sock.close()


def _status(values: dict[int, bytes]) -> tuple[int, str]:
    status = struct.unpack("<H", values.get(0x00000900, b"\xff\xff")[:2])[0]
    comment = values.get(0x00000902, b"").decode("ascii", "replace").strip("\x00 ")
    return status, comment


def _file_chunks(path: Path, offset: int, chunk: int) -> Iterable[bytes]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            data = fh.read(chunk)
            if not data:
                return
            yield data


def _converted(path: Path, target: str) -> bytes:
    """The data set of ``path`` encoded in ``target`` (an uncompressed little endian syntax)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:  # noqa: BLE001 - pydicom raises several types for missing handlers
            raise ValueError(f"cannot decompress {ds.file_meta.TransferSyntaxUID.name}: {exc}") from exc
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = target == IMPLICIT_LE
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _plan_contexts(headers: Sequence[Part10Header]) -> list[tuple[int, str, list[str]]]:
    pairs: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, str]] = set()
    fallback: set[str] = set()
    for h in headers:
        if (h.sop_class_uid, h.transfer_syntax) not in seen:
            seen.add((h.sop_class_uid, h.transfer_syntax))
            pairs.append((h.sop_class_uid, [h.transfer_syntax]))
        if h.sop_class_uid not in fallback:
            fallback.add(h.sop_class_uid)
            pairs.append((h.sop_class_uid, [EXPLICIT_LE, IMPLICIT_LE]))
    return [(2 * i + 1, abstract, syntaxes) for i, (abstract, syntaxes) in enumerate(pairs)]


def send_files(files: Iterable[Path], destination: Destination, timeout: float = 30.0,
               on_result: Callable[[FileResult], None] | None = None) -> SendReport:
    """Send ``files`` to ``destination`` over one association (more only when the files
    need more than 128 presentation contexts).  Never raises for network or peer errors:
    everything is in the returned :class:`SendReport`.  ``on_result`` is called with each
    file's result as soon as the peer answered for it (before the next file is sent), so a
    caller can record acknowledgements durably as they come."""
    started = time.monotonic()
    report = SendReport(destination)
    todo: list[tuple[FileResult, Part10Header]] = []
    for path in files:
        result = FileResult(Path(path))
        report.files.append(result)
        try:
            header = read_part10_header(result.path)
        except OSError as exc:
            result.error = f"cannot read: {exc.strerror or exc}"
            continue
        if header is None:
            result.skipped, result.error = True, "not a DICOM Part 10 file"
            continue
        result.sop_instance_uid = header.sop_instance_uid
        todo.append((result, header))
    while todo:
        batch, contexts = _batch(todo)
        todo = todo[len(batch):]
        _send_batch(batch, contexts, destination, timeout, report, on_result)
        if report.association_error:
            for result, _ in todo:
                result.error = report.association_error
            break
    report.seconds = time.monotonic() - started
    return report


def _batch(todo: Sequence[tuple[FileResult, Part10Header]]) -> tuple[list[tuple[FileResult, Part10Header]],
                                                                      list[tuple[int, str, list[str]]]]:
    """The longest prefix of ``todo`` whose contexts fit into one association."""
    count = len(todo)
    while True:
        contexts = _plan_contexts([h for _, h in todo[:count]])
        if len(contexts) <= MAX_CONTEXTS or count == 1:
            return list(todo[:count]), contexts
        count = max(1, count // 2)


def _send_batch(batch, contexts, destination: Destination, timeout: float, report: SendReport,
                on_result: Callable[[FileResult], None] | None = None) -> None:
    try:
        assoc = _Association(destination, contexts, timeout)
    except AssociationError as exc:
        report.association_error = str(exc)
        for result, _ in batch:
            result.error = str(exc)
        return
    exact = {(abstract, syntaxes[0]): cid for cid, abstract, syntaxes in contexts
             if len(syntaxes) == 1 and assoc.accepted.get(cid)}
    fallback: dict[str, tuple[int, str]] = {}
    for cid, abstract, syntaxes in contexts:
        accepted = assoc.accepted.get(cid)
        if len(syntaxes) > 1 and accepted:
            fallback[abstract] = (cid, accepted)
    message_id = 0
    try:
        for index, (result, header) in enumerate(batch):
            message_id = message_id % 65535 + 1
            cid = exact.get((header.sop_class_uid, header.transfer_syntax))
            if cid is not None:
                chunks = _file_chunks(result.path, header.dataset_offset, assoc.max_fragment)
            elif header.sop_class_uid in fallback:
                cid, target = fallback[header.sop_class_uid]
                try:
                    encoded = _converted(result.path, target)
                except Exception as exc:  # noqa: BLE001 - reported per file
                    result.error = (f"the peer did not accept transfer syntax {header.transfer_syntax} and "
                                    f"conversion failed: {exc}")
                    continue
                result.converted_to = target
                chunks = (encoded[i:i + assoc.max_fragment] for i in range(0, len(encoded), assoc.max_fragment))
            else:
                result.error = (f"the peer accepted no presentation context for SOP class "
                                f"{header.sop_class_uid} ({header.transfer_syntax})")
                continue
            assoc.send_message(cid, c_store_rq(header.sop_class_uid, header.sop_instance_uid, message_id), chunks)
            response = assoc.read_response()
            answered = struct.unpack("<H", response.get(0x00000120, b"\0\0")[:2])[0]
            if answered != message_id:
                raise AssociationError(f"{destination} answered message {answered} while {message_id} was pending")
            status, comment = _status(response)
            result.status = status
            if not result.ok:
                result.error = f"status {status:#06x}" + (f": {comment}" if comment else "")
            if on_result is not None:
                on_result(result)
    except AssociationError as exc:
        report.association_error = str(exc)
        for result, _ in batch[index:]:
            if result.status is None:
                result.error = str(exc)
        assoc.abort()
        return
    assoc.release()


def echo(destination: Destination, timeout: float = 10.0) -> tuple[bool, str]:
    """C-ECHO ``destination``: ``(True, "status 0x0000 in N ms")`` or ``(False, reason)``."""
    started = time.monotonic()
    try:
        assoc = _Association(destination, [(1, VERIFICATION, [IMPLICIT_LE])], timeout)
    except AssociationError as exc:
        return False, str(exc)
    try:
        if not assoc.accepted.get(1):
            assoc.abort()
            return False, f"{destination} does not accept verification (C-ECHO)"
        assoc.send_message(1, c_echo_rq(1), None)
        status, comment = _status(assoc.read_response())
    except AssociationError as exc:
        assoc.abort()
        return False, str(exc)
    assoc.release()
    ms = (time.monotonic() - started) * 1000
    if status != 0:
        return False, f"{destination} answered C-ECHO with status {status:#06x} {comment}".rstrip()
    return True, f"{destination}: C-ECHO status 0x0000 in {ms:.0f} ms"
