"""Every change HOPS makes to pynetdicom, in one module, applied explicitly.

:func:`apply` (called by the receiver when it starts, never on import) installs them on
the pynetdicom versions they were written for (:data:`SUPPORTED`) and raises
RuntimeError on any other, because the listener's protections depend on them.  An
outbound sender in the same process is not affected by the receive-side patches
(:mod:`magickbox.results.send` speaks the upper layer on its own socket).

**Protections** (:mod:`magickbox.peerguard`): every PDU's length is checked before it is
read (``DULServiceProvider._read_pdu_data``) and requests are screened before they are
served (``Association._serve_request``).

**Hostile UIDs**: pynetdicom's own UID check (1-64 characters) raised inside its reactor
for a C-STORE-RQ with a longer UID, so the peer got an A-ABORT and the log said nothing.
**Patch:** pynetdicom takes any UID text (``_config.VALIDATORS["UI"]``); the receiver checks
every UID against the DICOM grammar (:mod:`magickbox.uids`) and answers ``0xC220``.
pydicom's validation of values it reads is off (``reading_validation_mode = IGNORE``): it
logged the peer's values several times per request and printed them to stderr as
multi-line warnings; its UserWarnings are ignored and its logger logs errors only.

**Spooling**: each incoming DIMSE message keeps its data set in a
:class:`magickbox.store.SpoolBuffer` (memory, spilling to the archive's tmp directory)
instead of a BytesIO (``DIMSEMessage.__init__``).

**Speed-ups**, measured: profiling a plain pynetdicom storage SCP (see ``benchmarks/bench_receive.py``) showed
that most of the time per instance is not DICOM work but waiting and generic encoding:

1. The association reactor sleeps 1 ms between looks at its message queue, so every
   C-STORE waits for the next tick.  **Patch:** it blocks on the queue instead (with a
   short timeout so release/abort/kill are still noticed).
2. The DUL thread sleeps 1 ms whenever a loop found nothing to do, which delays the
   response after the handler returns and the next request.  **Patch:** it waits in
   ``select`` on the association's socket and a wake-up socket pair that sending a PDU
   and killing the DUL write to (at most 1 ms, as before, for anything else), so it
   reacts at once without polling; an earlier patch that polled every 50 µs while busy
   cost a core's worth of wake-ups with several associations.  (The 50 µs/1 ms delay
   property is still installed but no longer used by the receive loop.)
3. Each C-STORE-RSP is built as a pydicom Dataset and encoded generically.  **Patch:**
   the seven elements of the response command set are packed with ``struct``.
4. Each C-STORE-RQ command set is converted element by element through pydicom
   (validation, UID objects).  **Patch:** its six elements are read with ``struct``;
   anything unusual falls back to pynetdicom's own code.
5. Every association deep-copies the ~130 supported presentation contexts (with 45
   transfer syntaxes each) through ``copy.deepcopy``.  **Patch:** a plain copy of the
   same attributes.

Behaviour is unchanged (same PDUs on the wire; tests run with the patches).  They touch
private pynetdicom internals, so they are applied only to the pynetdicom versions they
were written for (:data:`SUPPORTED`); other versions run unpatched, just slower.
"""
from __future__ import annotations

import copy
import logging
import queue
import select
import socket
import ssl
import struct
import time
import warnings
from typing import Any, Callable

import pynetdicom
from pydicom import config as pydicom_config
from pynetdicom import _config as _pynetdicom_config
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom import transport as _transport
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

__all__ = ["apply", "SUPPORTED"]

log = logging.getLogger("magickbox.pynetdicom_patches")

SUPPORTED = ("3.0.",)
_applied = False

_BUSY_DELAY = 0.00005
_IDLE_AFTER = 0.05


# -- 1. association reactor ---------------------------------------------------------------
def _run_reactor(self) -> None:  # mirrors Association._run_reactor, blocking on the queue
    self._is_paused = False
    msg_queue = self.dimse.msg_queue
    while not self._kill:
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        try:
            context_id, msg = msg_queue.get(block=True, timeout=0.005)
        except queue.Empty:
            context_id, msg = None, None
        if msg:
            self._serve_request(msg, context_id)
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


# -- 2. adaptive DUL loop delay -------------------------------------------------------------
def _get_delay(self) -> float:
    if time.monotonic() - getattr(self, "_hops_active", 0.0) < _IDLE_AFTER:
        return _BUSY_DELAY
    return getattr(self, "_hops_idle_delay", 0.001)


def _set_delay(self, value: float) -> None:
    self._hops_idle_delay = value


_original_is_transport_event = _dul.DULServiceProvider._is_transport_event
_original_process_recv = _dul.DULServiceProvider._process_recv_primitive


def _is_transport_event(self) -> bool:
    event = _original_is_transport_event(self)
    if event:
        self._hops_active = time.monotonic()
    return event


def _process_recv_primitive(self) -> bool:
    sent = _original_process_recv(self)
    if sent:
        self._hops_active = time.monotonic()
    return sent


# -- 2b. the DUL loop waits for work instead of polling ----------------------------------------
#: longest wait of the DUL loop: bounds how late it notices events other threads queue
#: without waking it (rare: aborts, timers), as pynetdicom's own 1 ms loop delay did
_DUL_MAX_WAIT = 0.001


def _wake(dul: Any) -> None:
    pair = getattr(dul, "_hops_wake", None)
    if pair is not None:
        try:
            pair[1].send(b"\0")
        except OSError:              # closed (the loop ended) or full (already woken)
            pass


def _wait_for_work(dul: Any, timeout: float) -> None:
    """Block until the peer sent data, this association queued a PDU to send (see
    :func:`_send_pdu`), the DUL was killed, or ``timeout`` s passed."""
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    pair = getattr(dul, "_hops_wake", None)
    if pair is None:
        pair = dul._hops_wake = socket.socketpair()
        pair[0].setblocking(False)
        pair[1].setblocking(False)
    if sock is None or sock.fileno() < 0:
        time.sleep(timeout)
        return
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return                       # TLS data already decrypted: select cannot see it
    if dul.to_provider_queue.qsize() or dul.event_queue.qsize() or dul._kill_thread:
        return
    try:
        ready, _, _ = select.select([sock, pair[0]], [], [], timeout)
    except (OSError, ValueError):
        return
    if pair[0] in ready:
        try:
            while pair[0].recv(4096):
                pass
        except OSError:
            pass


_original_send_pdu = _dul.DULServiceProvider.send_pdu
_original_kill_dul = _dul.DULServiceProvider.kill_dul


def _send_pdu(self, primitive) -> None:
    _original_send_pdu(self, primitive)
    _wake(self)


def _kill_dul(self) -> None:
    _original_kill_dul(self)
    _wake(self)


def _dul_run_reactor(self) -> None:  # mirrors DULServiceProvider.run_reactor, waiting instead of sleeping
    self._idle_timer.start()
    wait = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                wait = True
            if wait:
                _wait_for_work(self, _DUL_MAX_WAIT)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                log.error("exception in the DUL loop; aborting the association")
                abort = A_ABORT_RQ()
                abort.source = 0x02
                abort.reason_diagnostic = 0x00
                self.socket.send(abort.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                wait = True
                continue
            self.state_machine.do_action(event)
            wait = False
    finally:
        pair = getattr(self, "_hops_wake", None)
        self._hops_wake = None
        if pair is not None:
            pair[0].close()
            pair[1].close()


# -- 3. C-STORE-RSP encoded with struct ----------------------------------------------------
def _element(tag_group: int, tag_elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag_group, tag_elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_c_store_rsp(rsp: C_STORE) -> bytes:
    """The command set of a C-STORE-RSP (implicit VR little endian)."""
    body = b"".join([
        _element(0x0000, 0x0002, _uid(str(rsp.AffectedSOPClassUID))),
        _element(0x0000, 0x0100, struct.pack("<H", 0x8001)),
        _element(0x0000, 0x0120, struct.pack("<H", rsp.MessageIDBeingRespondedTo)),
        _element(0x0000, 0x0800, struct.pack("<H", 0x0101)),
        _element(0x0000, 0x0900, struct.pack("<H", rsp.Status)),
        _element(0x0000, 0x1000, _uid(str(rsp.AffectedSOPInstanceUID))),
    ])
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


_original_send_msg = _dimse.DIMSEServiceProvider.send_msg


def _send_msg(self, primitive, context_id: int) -> None:
    simple = (isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
              and primitive.Status is not None and primitive.ErrorComment is None
              and primitive.OffendingElement is None and primitive.AffectedSOPClassUID
              and primitive.AffectedSOPInstanceUID)
    if not simple or self.assoc.is_requestor:
        return _original_send_msg(self, primitive, context_id)
    command = encode_c_store_rsp(primitive)
    if self.maximum_pdu_size and len(command) + 12 > self.maximum_pdu_size:
        return _original_send_msg(self, primitive, context_id)
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]
    self.dul.send_pdu(pdata)


# -- 4. C-STORE-RQ command set read with struct ----------------------------------------------
_original_c_store_to_primitive = _dimse_messages.C_STORE_RQ.message_to_primitive


def _c_store_rq_to_primitive(self):
    """Build the C-STORE request primitive straight from the encoded command set
    (implicit VR little endian) instead of converting every element through pydicom."""
    raw = self.encoded_command_set.getvalue()
    values: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    try:
        while pos + 8 <= end:
            group, elem, length = struct.unpack_from("<HHI", raw, pos)
            values[(group << 16) | elem] = raw[pos + 8:pos + 8 + length]
            pos += 8 + length
        primitive = C_STORE()
        primitive.MessageID = struct.unpack("<H", values[0x00000110])[0]
        primitive.AffectedSOPClassUID = values[0x00000002].rstrip(b"\x00 ").decode("ascii")
        primitive.AffectedSOPInstanceUID = values[0x00001000].rstrip(b"\x00 ").decode("ascii")
        primitive.Priority = struct.unpack("<H", values[0x00000700])[0]
        if values.get(0x00001030):
            primitive.MoveOriginatorApplicationEntityTitle = values[0x00001030].decode("ascii", "replace").strip()
        if values.get(0x00001031):
            primitive.MoveOriginatorMessageID = struct.unpack("<H", values[0x00001031])[0]
    except (KeyError, struct.error, UnicodeDecodeError, ValueError, TypeError):
        return _original_c_store_to_primitive(self)     # anything unusual: the generic path
    primitive.DataSet = self.data_set
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    return primitive


# -- 5. cheaper copy of the supported contexts per association ---------------------------
def _copy_contexts(contexts, memo=None):
    """What ``deepcopy`` of the server's PresentationContext list did, without the
    generic machinery (contexts hold only scalars and a list of UIDs)."""
    if not isinstance(contexts, list) or not all(isinstance(c, PresentationContext) for c in contexts):
        return copy.deepcopy(contexts, memo)
    copies = []
    for context in contexts:
        clone = PresentationContext.__new__(PresentationContext)
        clone.__dict__ = dict(context.__dict__)
        clone._transfer_syntax = list(context._transfer_syntax)
        copies.append(clone)
    return copies


# -- 6. spooled data sets ----------------------------------------------------------------------
_spool_factory: Callable[[], Any] | None = None
_original_dimse_init = _dimse_messages.DIMSEMessage.__init__


def _spooling_init(self: Any) -> None:
    _original_dimse_init(self)
    if _spool_factory is not None:
        self.data_set = _spool_factory()


def _any_uid_text(value: Any) -> tuple[bool, str]:
    """pynetdicom's UID validator for the node: any text (the receiver validates UIDs)."""
    return isinstance(value, str), "must be a str"


def apply(spool_factory: Callable[[], Any] | None = None) -> bool:
    """Install every patch once (``spool_factory``: makes the buffer an incoming data set
    is kept in; the latest one given is used).  Raises RuntimeError on a pynetdicom
    version the patches were not written for."""
    global _applied, _spool_factory
    if spool_factory is not None:
        _spool_factory = spool_factory
    if _applied:
        return True
    if not pynetdicom.__version__.startswith(SUPPORTED):
        raise RuntimeError(f"pynetdicom {pynetdicom.__version__}: magickbox's receiver is written for "
                           f"{', '.join(SUPPORTED)}x (its protections patch it); install pynetdicom 3.0 "
                           "(setup.py pins it)")
    from . import peerguard
    _dul.DULServiceProvider._read_pdu_data = peerguard.guarded_read_pdu_data
    _association.Association._serve_request = peerguard.guarded_serve_request
    _dimse_messages.DIMSEMessage.__init__ = _spooling_init
    _association.Association._run_reactor = _run_reactor
    _dul.DULServiceProvider._run_loop_delay = property(_get_delay, _set_delay)
    _dul.DULServiceProvider._is_transport_event = _is_transport_event
    _dul.DULServiceProvider._process_recv_primitive = _process_recv_primitive
    _dul.DULServiceProvider.run_reactor = _dul_run_reactor
    _dul.DULServiceProvider.send_pdu = _send_pdu
    _dul.DULServiceProvider.kill_dul = _kill_dul
    _dimse.DIMSEServiceProvider.send_msg = _send_msg
    _dimse_messages.C_STORE_RQ.message_to_primitive = _c_store_rq_to_primitive
    _transport.deepcopy = _copy_contexts
    _pynetdicom_config.VALIDATORS["UI"] = _any_uid_text
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # pydicom's remarks on what a peer sent ("Expected implicit VR, but found explicit VR")
    # go to stderr as multi-line warnings; the receiver logs its own one-line verdict
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    _applied = True
    return True
