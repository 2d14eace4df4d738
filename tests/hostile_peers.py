"""Hostile DICOM peers for tests: raw sockets from chosen loopback addresses, associations
negotiated by pynetdicom and then spoken to in raw bytes (so a test can send any PDU,
PDV or command set), and what the node answered."""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

#: every PDU the node sends when it aborts: A-ABORT, length 4
A_ABORT = 0x07
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to the node from a chosen loopback source address (every
    127.x.y.z is loopback on Linux, so a test can play many different peers)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@dataclass
class Answer:
    """What the node did with a connection: the PDU types it sent (in order), whether and
    when (seconds after our last byte) it closed the connection, and the C-STORE status
    if it answered one."""

    pdu_types: list[int]
    closed_after: float | None
    status: int | None = None
    abort: bytes = b""
    reject: bytes = b""

    @property
    def aborted(self) -> bool:
        return A_ABORT in self.pdu_types

    @property
    def rejected(self) -> bool:
        return A_ASSOCIATE_RJ in self.pdu_types

    def describe(self) -> str:
        parts = [f"PDUs {[hex(t) for t in self.pdu_types]}"]
        if self.status is not None:
            parts.append(f"status 0x{self.status:04X}")
        parts.append("open" if self.closed_after is None else f"closed after {self.closed_after:.1f} s")
        return ", ".join(parts)


def read_answer(sock: socket.socket, timeout: float) -> Answer:
    """Read PDUs until the node closes the connection or ``timeout`` seconds pass; a
    C-STORE-RSP in a P-DATA-TF gives its status."""
    started = time.monotonic()
    data = b""
    closed_after = None
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if _complete_response(data):
                break
            continue
        except OSError:
            closed_after = time.monotonic() - started
            break
        if not chunk:
            closed_after = time.monotonic() - started
            break
        data += chunk
        if _complete_response(data):
            break
    answer = Answer([], closed_after)
    pos = 0
    while pos + 6 <= len(data):
        pdu_type, length = data[pos], struct.unpack_from(">I", data, pos + 2)[0]
        body = data[pos + 6:pos + 6 + length]
        answer.pdu_types.append(pdu_type)
        if pdu_type == A_ABORT:
            answer.abort = body
        elif pdu_type == A_ASSOCIATE_RJ:
            answer.reject = body
        elif pdu_type == P_DATA_TF:
            status = _status_in(body)
            if status is not None:
                answer.status = status
        pos += 6 + length
    return answer


def _complete_response(data: bytes) -> bool:
    """Whether ``data`` holds a whole P-DATA-TF with a status (a C-STORE-RSP): then a
    reader need not wait for the connection to close."""
    pos = 0
    while pos + 6 <= len(data):
        length = struct.unpack_from(">I", data, pos + 2)[0]
        if pos + 6 + length > len(data):
            return False
        if data[pos] == P_DATA_TF and _status_in(data[pos + 6:pos + 6 + length]) is not None:
            return True
        pos += 6 + length
    return False


def _status_in(pdata_body: bytes) -> int | None:
    """The Status (0000,0900) of a command set carried in one P-DATA-TF body."""
    pos = 0
    command = b""
    while pos + 6 <= len(pdata_body):
        item_length = struct.unpack_from(">I", pdata_body, pos)[0]
        if pdata_body[pos + 5] & 1:
            command += pdata_body[pos + 6:pos + 4 + item_length]
        pos += 4 + item_length
    at = 0
    while at + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHI", command, at)
        if (group, elem) == (0, 0x0900):
            return struct.unpack_from("<H", command, at + 8)[0]
        at += 8 + length
    return None


def _element(elem: int, value: bytes) -> bytes:
    """An implicit VR little endian command element of group 0000."""
    return struct.pack("<HHI", 0, elem, len(value)) + value


def _uid(text: str | bytes) -> bytes:
    raw = text.encode("latin-1") if isinstance(text, str) else text
    return raw + b"\x00" * (len(raw) % 2)


def c_store_command(sop_class: str | bytes, sop_instance: str | bytes, message_id: int = 1,
                    with_data_set: bool = True) -> bytes:
    """A C-STORE-RQ command set, UIDs taken verbatim (no validation, any bytes)."""
    body = (_element(0x0002, _uid(sop_class)) + _element(0x0100, struct.pack("<H", 0x0001))
            + _element(0x0110, struct.pack("<H", message_id)) + _element(0x0700, struct.pack("<H", 0))
            + _element(0x0800, struct.pack("<H", 0x0000 if with_data_set else 0x0101))
            + _element(0x1000, _uid(sop_instance)))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, flags: int, fragment: bytes) -> bytes:
    """A P-DATA-TF with one PDV (``flags``: bit 0 command, bit 1 last fragment)."""
    item = struct.pack(">I", 2 + len(fragment)) + bytes([context_id, flags]) + fragment
    return b"\x04\x00" + struct.pack(">I", len(item)) + item


class RawAssociation:
    """An association negotiated by pynetdicom from ``source``, then driven in raw bytes."""

    def __init__(self, port: int, source: str, called: str = "ProcQA", calling: str = "HOSTILE",
                 abstract_syntax: str = "1.2.840.10008.5.1.4.1.1.4",
                 transfer_syntax: str = "1.2.840.10008.1.2"):
        from pynetdicom import AE
        ae = AE(ae_title=calling)
        ae.add_requested_context(abstract_syntax, [transfer_syntax])
        ae.acse_timeout = 30
        assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))
        if not assoc.is_established:
            raise AssertionError(f"association from {source} to {called} not established")
        self.context_id = assoc.accepted_contexts[0].context_id
        self.max_pdu = assoc.acceptor.maximum_length
        self.sock = assoc.dul.socket.socket
        assoc.dul.kill_dul()                       # from here on we speak raw bytes
        time.sleep(0.2)
        self.sock.settimeout(10)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def c_store(self, sop_class: str | bytes, sop_instance: str | bytes, data_set: bytes,
                timeout: float = 30) -> Answer:
        """Send a C-STORE-RQ with ``data_set`` (any bytes) and read the answer."""
        self.send(p_data(self.context_id, 0x03, c_store_command(sop_class, sop_instance)))
        chunk = max(1024, self.max_pdu - 12) if self.max_pdu else 16000
        fragments = [data_set[i:i + chunk] for i in range(0, len(data_set), chunk)] or [b""]
        for n, fragment in enumerate(fragments):
            self.send(p_data(self.context_id, 0x02 if n == len(fragments) - 1 else 0x00, fragment))
        return read_answer(self.sock, timeout)

    def release(self) -> None:
        try:
            self.sock.sendall(b"\x05\x00" + struct.pack(">I", 4) + b"\x00" * 4)
            read_answer(self.sock, 5)
        except OSError:
            pass
        self.sock.close()
