"""Protections of the DICOM listener against peers that stall, flood or lie.

A scanner must keep being able to send while misbehaving peers are connected.  The
listener (:class:`GuardedAssociationServer`, a pynetdicom association server) therefore:

* **times out incomplete associations** (ARTIM-like): a new connection has
  ``association_timeout`` seconds in total to finish its TLS handshake and deliver a
  complete A-ASSOCIATE-RQ, however slowly it dribbles bytes; then it is closed.  The TLS
  handshake runs in the connection's own thread, never in the accept loop.
* **bounds connections per peer address** (``max_connections_per_address``, pending and
  associated together): further connections from that address are closed at once.
* **keeps capacity for well-behaved peers**: connections that have not yet delivered an
  A-ASSOCIATE-RQ are a separate pool of ``max_pending_connections``; when it is full the
  oldest pending connection is closed to admit the new one, so a flood of silent or
  stalled connections cannot lock out a scanner that associates promptly.  Associated
  peers count against ``max_associations`` (A-ASSOCIATE-RJ *local-limit-exceeded* above).
* **never allocates what a length field claims**: every PDU's length is checked before
  its body is read — at most :data:`MAX_ASSOCIATE_RQ_BYTES` before negotiation, at most the
  node's negotiated maximum PDU for P-DATA-TF afterwards; a longer PDU, an unknown PDU type,
  a PDU the requestor may not send in this phase (anything but A-ASSOCIATE-RQ or A-ABORT
  before the association; A-ASSOCIATE-RQ/AC/RJ during it), a P-DATA-TF whose PDV items are
  missing, shorter than their header, longer than the PDU or for a presentation context
  that was not accepted, or a PDU that does not decode gets an A-ABORT and the connection
  is closed.  A command set larger than :data:`MAX_COMMAND_SET_BYTES` is aborted too, and
  the connection is not read while a complete DIMSE message still waits for the handler
  (back-pressure).
* **says why a connection ended**: a connection closed by its peer inside a PDU, one that
  never completed its A-ASSOCIATE-RQ in time, and an association aborted after
  ``idle_timeout`` s without traffic (with an A-ABORT even when the peer stalled inside a
  PDU) each get a log line.
* **answers a C-STORE-RQ without its required UIDs** with status ``0xC220`` (or ``0xC210``
  for other missing fields) instead of ignoring it, and one whose SOP Class UID is not the
  abstract syntax of its presentation context with ``0x0122`` (*SOP class not supported*);
  other invalid requests get an A-ABORT.
* logs each of these events as **one line** (:mod:`.logsafe`), at most one line per peer
  address and kind of event every :data:`LOG_INTERVAL` seconds (then a count).

Memory per connection is therefore bounded: a pending connection holds at most one
A-ASSOCIATE-RQ (1 MiB), an association one PDU plus the data set being received (see
the spool threshold in :mod:`.store`).

The PDU reader (:func:`guarded_read_pdu_data`) and the DIMSE request hook
(:func:`guarded_serve_request`) replace private pynetdicom internals; they are installed
with every other pynetdicom patch by :func:`magickbox.pynetdicom_patches.apply`, which
refuses another pynetdicom version, so the node does not start unprotected.
"""
from __future__ import annotations

import collections
import logging
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from .logsafe import printable

__all__ = ["GuardLimits", "ConnectionGuard", "GuardedAssociationServer", "guarded_read_pdu_data",
           "guarded_serve_request",
           "MAX_ASSOCIATE_RQ_BYTES", "MAX_COMMAND_SET_BYTES", "abort_pdu"]

log = logging.getLogger("magickbox.peerguard")

#: longest PDU accepted before an association is negotiated (an A-ASSOCIATE-RQ with 128
#: presentation contexts of many transfer syntaxes is a few hundred KiB at most)
MAX_ASSOCIATE_RQ_BYTES = 1 << 20
#: longest DIMSE command set (real ones are a few hundred bytes)
MAX_COMMAND_SET_BYTES = 1 << 16
#: seconds between two log lines of the same kind about the same peer address
LOG_INTERVAL = 10.0
#: after an A-ABORT: seconds and bytes we keep reading (and discarding) so that the
#: peer sees the A-ABORT before the connection closes
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 << 20

_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
# A-ABORT reasons (PS3.8 9.3.8, source 2 = service provider)
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06


def abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider."""
    return b"\x07\x00" + struct.pack(">I", 4) + bytes([0, 0, 2, reason])


@dataclass(frozen=True)
class GuardLimits:
    """The listener's limits (``[dicom]`` settings, see :mod:`.config`)."""

    association_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_associations: int = 64
    max_pending_connections: int = 32
    max_connections_per_address: int = 16
    max_pdu: int = 131072


class PeerClosed(Exception):
    """The connection ended (closed by the peer, timed out or closed by the guard);
    ``notable``: worth a log line (a timeout, not an ordinary close)."""

    def __init__(self, message: str, notable: bool = False, stalled: bool = False):
        super().__init__(message)
        self.notable = notable
        self.stalled = stalled              # an association that stopped sending inside a PDU


class Connection:
    """One accepted TCP connection and where it is in its life."""

    __slots__ = ("address", "sock", "opened", "deadline", "pending", "closed", "assoc", "guard", "released",
                 "aborted", "reading")

    def __init__(self, guard: "ConnectionGuard", sock: socket.socket, address: str):
        self.guard = guard
        self.address = address
        self.sock = sock
        self.opened = time.monotonic()
        self.deadline = self.opened + guard.limits.association_timeout
        self.pending = True                  # no A-ASSOCIATE-RQ yet
        self.closed = threading.Event()
        self.assoc: Any = None
        self.released = False
        self.aborted = False                 # the guard aborted it (and logged why)
        self.reading: str | None = None      # the PDU being read (its name), if any

    @property
    def kind(self) -> str:
        """How log lines name it: a connection until its A-ASSOCIATE-RQ, then an association."""
        return "connection" if self.pending else "association"

    def recv_timeout(self) -> float:
        """Seconds the next read may block: what is left of the association deadline
        while pending, the idle timeout afterwards."""
        if self.pending:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("association timeout")
            return remaining
        return self.guard.limits.idle_timeout

    def shut(self) -> None:
        """Close the connection from any thread (a blocked read returns at once)."""
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class PeerEventLog:
    """Warnings about peers, at most one line per (address, kind) every ``interval`` s."""

    def __init__(self, interval: float = LOG_INTERVAL):
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def warning(self, address: str, kind: str, message: str, *args: object) -> None:
        key = (address, kind)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
            if len(self._last) > 4096:                    # forget old peers
                for k in [k for k, t in self._last.items() if now - t >= self.interval]:
                    del self._last[k]
                    self._suppressed.pop(k, None)
        text = message % args if args else message
        if suppressed:
            text += f" ({suppressed} more like this in the last {self.interval:g} s)"
        log.warning("%s", text)


class ConnectionGuard:
    """Admission, accounting and eviction of the listener's connections.  Thread-safe."""

    def __init__(self, limits: GuardLimits):
        self.limits = limits
        self.events = PeerEventLog()
        self._lock = threading.Lock()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._pending: "collections.OrderedDict[int, Connection]" = collections.OrderedDict()
        self._associated = 0
        self._admitted: dict[int, Connection] = {}     # id(socket) -> connection, until its handler runs

    def admit(self, sock: socket.socket, address: str) -> Connection | None:
        """A connection was accepted: register it, or None (the caller closes it) if its
        address already has its share.  Makes room in the pending pool by closing the
        oldest pending connection."""
        evicted = None
        with self._lock:
            if self._per_address[address] >= self.limits.max_connections_per_address:
                refused = True
            else:
                refused = False
                conn = Connection(self, sock, address)
                self._per_address[address] += 1
                if len(self._pending) >= self.limits.max_pending_connections:
                    _, evicted = self._pending.popitem(last=False)
                self._pending[id(conn)] = conn
                self._admitted[id(sock)] = conn
        if refused:
            self.events.warning(address, "per-address", "connection from %s refused: it already has %d "
                                "connections (dicom.max_connections_per_address, per address)", address,
                                self.limits.max_connections_per_address)
            return None
        if evicted is not None:
            self.events.warning(evicted.address, "evicted", "connection from %s closed after %.1f s without "
                                "an A-ASSOCIATE-RQ to make room for a new one (dicom.max_pending_connections = %d)",
                                evicted.address, time.monotonic() - evicted.opened,
                                self.limits.max_pending_connections)
            evicted.shut()
        return conn

    def take(self, sock: socket.socket) -> Connection | None:
        with self._lock:
            return self._admitted.pop(id(sock), None)

    def negotiated(self, conn: Connection) -> None:
        """A complete A-ASSOCIATE-RQ arrived: the connection leaves the pending pool."""
        with self._lock:
            if conn.pending:
                conn.pending = False
                self._pending.pop(id(conn), None)
                self._associated += 1

    def over_capacity(self) -> bool:
        """True if accepting the association just negotiated exceeds ``max_associations``."""
        with self._lock:
            return self._associated > self.limits.max_associations

    def release(self, conn: Connection) -> None:
        """The connection is finished (idempotent)."""
        with self._lock:
            if conn.released:
                return
            conn.released = True
            if conn.pending:
                self._pending.pop(id(conn), None)      # (an evicted one is gone already)
            else:
                self._associated -= 1
            self._admitted.pop(id(conn.sock), None)
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]
        conn.closed.set()

    def counts(self) -> dict[str, int]:
        """Connections now: pending (no A-ASSOCIATE-RQ yet), associated, peer addresses."""
        with self._lock:
            return {"pending": len(self._pending), "associated": self._associated,
                    "addresses": len(self._per_address)}


# -- the listener ------------------------------------------------------------------------------
class GuardedRequestHandler(RequestHandler):
    """Per-connection thread: TLS handshake under the association deadline, then the
    pynetdicom association, released from the guard when its thread ends."""

    server: "GuardedAssociationServer"

    def handle(self) -> None:
        guard = self.server.guard
        conn = guard.take(self.request)
        if conn is None:                     # not admitted through verify_request
            return
        started = False
        try:
            if self.server.tls_context is not None:
                self.request = self._tls_handshake(conn)
            self.request.settimeout(guard.limits.idle_timeout)
            assoc = self._create_association()
            conn.assoc = assoc
            assoc._hops_connection = conn
            _wake_on_close(assoc.dul, conn)
            _explain_idle_abort(assoc.dul, conn)
            run = assoc.run

            def run_and_release() -> None:
                try:
                    run()
                finally:
                    guard.release(conn)
                    conn.shut()

            assoc.run = run_and_release
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            started = True
        except (OSError, ssl.SSLError) as exc:
            if not conn.closed.is_set():
                guard.events.warning(conn.address, "tls", "connection from %s closed during the TLS handshake: %s",
                                     conn.address, printable(exc) or type(exc).__name__)
        finally:
            if not started:
                guard.release(conn)
                conn.shut()
                try:
                    self.request.close()
                except OSError:
                    pass

    def _tls_handshake(self, conn: Connection) -> ssl.SSLSocket:
        conn.sock.settimeout(max(0.01, conn.recv_timeout()))
        tls = self.server.tls_context.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
        conn.sock = tls
        tls.do_handshake()                   # one deadline for the whole handshake (CPython)
        return tls


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with a :class:`ConnectionGuard`."""

    request_queue_size = 128
    daemon_threads = True

    def __init__(self, ae: Any, address: tuple[str, int], ae_title: str, contexts: list, ssl_context: Any = None,
                 evt_handlers: list | None = None, *, guard: ConnectionGuard,
                 tls_context: ssl.SSLContext | None = None, listen_socket: socket.socket | None = None) -> None:
        """``listen_socket``: an already listening socket shared with the node's other
        receiving processes (:mod:`.receivers`) instead of binding ``address``."""
        self.guard = guard
        self.tls_context = tls_context
        self.shared_socket = listen_socket
        # TLS is not set up in the accept loop (pynetdicom would handshake there, with no
        # time limit) but in each connection's handler
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers=evt_handlers,
                         request_handler=GuardedRequestHandler)

    def server_bind(self) -> None:
        if self.shared_socket is None:
            return super().server_bind()
        self.socket.close()
        self.socket = self.shared_socket
        # a short timeout: another process may take a connection this one saw (accept
        # then waits at most this long before the serve loop looks again)
        self.socket.settimeout(0.5)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.shared_socket is None:
            super().server_activate()

    def server_close(self) -> None:
        if self.shared_socket is None:
            return super().server_close()
        self.socket.close()                  # never shutdown(): the other processes still listen

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.guard.admit(request, str(client_address[0])) is not None

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:                # e.g. no thread could be started: give the slot back
            conn = self.guard.take(request)
            if conn is not None:
                self.guard.release(conn)
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr."""
        import sys
        log.error("connection from %s failed in its handler", client_address[0], exc_info=sys.exc_info())


def _wake_on_close(dul: Any, conn: Connection) -> None:
    """Make the association thread's waits for the peer's A-ASSOCIATE-RQ end as soon as
    the guard closes the connection (instead of after the whole timeout)."""
    receive = dul.receive_pdu

    def receive_pdu(wait: bool = False, timeout: float | None = None) -> Any:
        if not wait or not conn.pending:
            return receive(wait=wait, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            primitive = receive(wait=True, timeout=step)
            if primitive is not None or conn.closed.is_set():
                return primitive
            if deadline is not None and time.monotonic() >= deadline:
                if conn.pending and not conn.closed.is_set():     # a silent peer: the read never started
                    conn.closed.set()
                    conn.guard.events.warning(conn.address, "timeout", "connection from %s closed: no complete "
                                              "A-ASSOCIATE-RQ within %g s (dicom.association_timeout)",
                                              conn.address, conn.guard.limits.association_timeout)
                return None

    dul.receive_pdu = receive_pdu


def _explain_idle_abort(dul: Any, conn: Connection) -> None:
    """pynetdicom aborts an association after ``idle_timeout`` s without a complete PDU;
    log why (instead of a bare "aborted"), and send the A-ABORT ourselves when the peer
    stalled inside a PDU: the DUL thread that would send pynetdicom's is blocked reading it."""
    expired = dul.idle_timer_expired

    def idle_timer_expired() -> bool:
        if not expired():
            return False
        if not conn.aborted and not conn.closed.is_set():
            conn.aborted = True
            inside = conn.reading
            idle = conn.guard.limits.idle_timeout
            if inside is None:
                conn.guard.events.warning(conn.address, "timeout", "association from %s: nothing received for "
                                          "%g s (dicom.idle_timeout); A-ABORT sent", conn.address, idle)
            else:
                conn.guard.events.warning(conn.address, "timeout", "association from %s: stalled for %g s inside "
                                          "%s PDU (dicom.idle_timeout); A-ABORT sent, connection closed",
                                          conn.address, idle, _article(inside))
                if not isinstance(conn.sock, ssl.SSLSocket):   # no TLS writes beside the blocked TLS read
                    try:
                        conn.sock.settimeout(2.0)
                        conn.sock.sendall(abort_pdu(REASON_NOT_SPECIFIED))
                    except (OSError, ValueError):
                        pass
                conn.shut()
        return True

    dul.idle_timer_expired = idle_timer_expired


def _article(name: str) -> str:
    return ("an " if name[0] in "AEIOU" else "a ") + name


# -- the PDU reader ----------------------------------------------------------------------------
_original_read_pdu_data = _dul.DULServiceProvider._read_pdu_data
_original_serve_request = _association.Association._serve_request


def _recv_exact(conn: Connection, size: int, inside: str | None = None) -> bytearray:
    """Exactly ``size`` bytes, each read limited by the connection's deadline or idle
    timeout; raises :class:`PeerClosed` if the peer closes or stalls first (notable when it
    closes in the middle: ``inside`` names the PDU whose body this is)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    sock = conn.sock
    while got < size:
        try:
            sock.settimeout(conn.recv_timeout())
            n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        except socket.timeout:
            if conn.pending:
                raise PeerClosed(f"no complete A-ASSOCIATE-RQ within {conn.guard.limits.association_timeout:g} s"
                                 " (dicom.association_timeout)", notable=True) from None
            raise PeerClosed(f"stalled for {conn.guard.limits.idle_timeout:g} s inside {_article(inside or 'PDU header')}"
                             " PDU (dicom.idle_timeout)", notable=True, stalled=True) from None
        except OSError as exc:
            if inside is None and got == 0:
                raise PeerClosed(f"connection lost: {exc}") from None
            raise PeerClosed(f"connection lost inside {_article(inside or 'PDU header')} PDU after {got} of "
                             f"{size} bytes: {exc}", notable=True) from None
        if n == 0:
            if inside is None and got == 0:
                raise PeerClosed("closed")
            raise PeerClosed(f"closed inside {_article(inside or 'PDU header')} PDU after {got} of {size} "
                             f"{'body ' if inside else ''}bytes", notable=True)
        got += n
    return buf


def _close(dul: Any) -> None:
    """Close the transport; the state machine sees Evt17 (transport closed)."""
    if dul.socket is not None and dul.socket.socket is not None:
        dul.socket.close()
    else:
        dul.event_queue.put("Evt17")


def _abort(dul: Any, conn: Connection, reason: int, kind: str, message: str) -> None:
    """Send an A-ABORT, let the peer see it, close the connection, log one line."""
    conn.aborted = True
    conn.guard.events.warning(conn.address, kind, "%s from %s: %s; A-ABORT sent, connection closed",
                              "association" if not conn.pending else "connection", conn.address, message)
    sock = conn.sock
    try:
        sock.settimeout(2.0)
        sock.sendall(abort_pdu(reason))
        sock.shutdown(socket.SHUT_WR)
        drained, ends = 0, time.monotonic() + LINGER_SECONDS
        scratch = bytearray(65536)
        while drained < LINGER_BYTES and time.monotonic() < ends:
            sock.settimeout(max(0.01, ends - time.monotonic()))
            n = sock.recv_into(scratch)
            if n == 0:
                break
            drained += n
    except (OSError, ValueError):
        pass
    conn.closed.set()
    _close(dul)


def guarded_read_pdu_data(self: Any) -> None:
    """Replaces ``DULServiceProvider._read_pdu_data`` for connections of a guarded server."""
    conn: Connection | None = getattr(self.assoc, "_hops_connection", None)
    if conn is None:
        return _original_read_pdu_data(self)
    try:
        conn.reading = "PDU header"
        header = _recv_exact(conn, 6)
        pdu_type, _, length = struct.unpack(">BBL", header)
        name = _PDU_NAMES.get(pdu_type)
        if name is None:
            return _abort(self, conn, REASON_UNRECOGNIZED_PDU, "pdu-type", f"unknown PDU type 0x{pdu_type:02X}")
        if pdu_type not in (_EXPECTED_BEFORE if conn.pending else _EXPECTED_DURING):
            return _abort(self, conn, REASON_UNEXPECTED_PDU, "pdu-order", f"unexpected {name} PDU "
                          f"{'before an association' if conn.pending else 'in an established association'}")
        limit = conn.guard.limits.max_pdu if pdu_type == 0x04 and not conn.pending else MAX_ASSOCIATE_RQ_BYTES
        if length > limit:
            return _abort(self, conn, REASON_INVALID_PARAMETER, "pdu-length",
                          f"{name} PDU of {length} bytes, longer than the {limit} allowed"
                          f"{' before negotiation' if conn.pending else ' (negotiated maximum)'}")
        conn.reading = name
        body = _recv_exact(conn, length, inside=name)
    except PeerClosed as exc:
        if exc.stalled and not conn.closed.is_set():
            return _abort(self, conn, REASON_NOT_SPECIFIED, "timeout", str(exc))
        if exc.notable and not conn.closed.is_set():
            if str(exc).startswith("closed inside") or str(exc).startswith("connection lost inside"):
                conn.guard.events.warning(conn.address, "closed", "%s from %s %s", conn.kind, conn.address, exc)
            else:
                conn.guard.events.warning(conn.address, "timeout", "connection from %s closed: %s", conn.address, exc)
        conn.closed.set()
        return _close(self)
    finally:
        conn.reading = None
    if pdu_type == 0x04:
        problem = _pdata_problem(self, body)
        if problem is not None:
            return _abort(self, conn, REASON_INVALID_PARAMETER, "pdv", problem)
    try:
        pdu, event = self._decode_pdu(header + body)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the peer's
        return _abort(self, conn, REASON_INVALID_PARAMETER, "malformed",
                      f"malformed {name} PDU ({printable(exc)})")
    if pdu_type == 0x01:
        conn.guard.negotiated(conn)
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)
    if pdu_type == 0x04:
        _wait_for_handler(self, conn)


#: PDU types a requestor may send before its association is established / during it
_EXPECTED_BEFORE = frozenset({0x01, 0x07})
_EXPECTED_DURING = frozenset({0x04, 0x05, 0x06, 0x07})


def _pdata_problem(dul: Any, body: bytearray) -> str | None:
    """What is wrong with this P-DATA-TF's PDV items, or None: none at all, one shorter
    than its 2-byte header or running past the PDU, one for a presentation context that
    was not accepted, or command fragments that make the message's command set longer
    than :data:`MAX_COMMAND_SET_BYTES` (walks the items' headers only)."""
    if len(body) < 6:
        return f"a P-DATA-TF of {len(body)} bytes with no PDV item"
    accepted = getattr(dul.assoc, "_accepted_cx", {})
    message = getattr(dul.assoc.dimse, "message", None)
    pending = message.encoded_command_set.tell() if message is not None else 0
    pos = 0
    while pos < len(body):
        if pos + 6 > len(body):
            return f"{len(body) - pos} stray bytes after the PDV items of a P-DATA-TF"
        item_length = struct.unpack_from(">I", body, pos)[0]
        if item_length < 2 or pos + 4 + item_length > len(body):
            return f"a PDV item of {item_length} bytes in a P-DATA-TF of {len(body)} bytes"
        context_id = body[pos + 4]
        if context_id not in accepted:
            return f"a PDV for presentation context {context_id}, which was not accepted"
        if body[pos + 5] & 1:                       # command fragment
            pending += item_length - 2
        pos += 4 + item_length
    if pending > MAX_COMMAND_SET_BYTES:
        return f"DIMSE command set longer than {MAX_COMMAND_SET_BYTES} bytes"
    return None


def _wait_for_handler(dul: Any, conn: Connection) -> None:
    """Back-pressure: do not read the next PDU while a complete DIMSE message still waits
    for the association's handler (a peer that ignores the operations window would
    otherwise queue data sets without limit)."""
    queue = dul.assoc.dimse.msg_queue
    if queue.qsize() < 2:
        return
    ends = time.monotonic() + conn.guard.limits.idle_timeout
    while queue.qsize() >= 2 and time.monotonic() < ends and not conn.closed.is_set() and not dul.assoc._kill:
        time.sleep(0.001)


# -- invalid DIMSE requests ----------------------------------------------------------------------
#: status of a C-STORE-RQ without a required UID / without another required field
STATUS_MISSING_UID = 0xC220
STATUS_MISSING_FIELD = 0xC210
#: status of a C-STORE-RQ whose SOP class is not its presentation context's (PS3.7 C.5.11)
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122


def _respond(assoc: Any, msg: Any, context_id: int, status: int) -> None:
    """Send the C-STORE-RSP with ``status`` to the request ``msg``."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
    rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
    rsp.Status = status
    assoc.dimse.send_msg(rsp, context_id)


def guarded_serve_request(self: Any, msg: Any, context_id: int) -> None:
    conn: Connection | None = getattr(self, "_hops_connection", None)
    if conn is not None and msg.is_valid_request and isinstance(msg, C_STORE):
        context = self._accepted_cx.get(context_id)
        if context is not None and msg.AffectedSOPClassUID != context.abstract_syntax:
            data = msg.DataSet
            if hasattr(data, "discard"):
                data.discard()
            conn.guard.events.warning(conn.address, "invalid-request", "C-STORE-RQ from %s for SOP class %s on a "
                                      "presentation context for %s: status 0x%04X (SOP class not supported)",
                                      conn.address, printable(repr(str(msg.AffectedSOPClassUID))[:80]),
                                      context.abstract_syntax, STATUS_SOP_CLASS_NOT_SUPPORTED)
            _respond(self, msg, context_id, STATUS_SOP_CLASS_NOT_SUPPORTED)
            return None
    if conn is None or msg.is_valid_request:
        return _original_serve_request(self, msg, context_id)
    missing = [k for k in msg.REQUEST_KEYWORDS if getattr(msg, k, None) is None]
    if isinstance(msg, C_STORE) and msg.MessageID is not None:
        data = msg.DataSet
        if hasattr(data, "discard"):
            data.discard()
        status = STATUS_MISSING_UID if any(k.endswith("UID") for k in missing) else STATUS_MISSING_FIELD
        conn.guard.events.warning(conn.address, "invalid-request", "C-STORE-RQ from %s without %s: status 0x%04X",
                                  conn.address, ", ".join(missing), status)
        _respond(self, msg, context_id, status)
        return None
    conn.aborted = True
    conn.guard.events.warning(conn.address, "invalid-request", "invalid %s request from %s (missing %s): A-ABORT",
                              type(msg).__name__.replace("_", "-"), conn.address, ", ".join(missing))
    self.abort()
    return None
