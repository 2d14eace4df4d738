"""The storage SCP (pynetdicom): association acceptance, C-ECHO and durable C-STORE.

**Acceptance.**  The called AE title must be an installed, enabled bucket, the node's
own AE title or one of ``dicom.extra_ae_titles``; otherwise the association is rejected
with A-ASSOCIATE-RJ *rejected-permanent / service-user / called-AE-title-not-recognized*
(1, 1, 7).  A bucket's optional allow-list (``[dicom.access.<AETitle>]``) rejects other
callers with *calling-AE-title-not-recognized* (1, 1, 3); so is a calling AE title that
is not one (control characters, backslash, not ASCII).  The node's own and extra AE
titles accept C-ECHO from anyone but storage only from the callers their
``[dicom.access.<AETitle>]`` table names (no table: nobody); other callers get an
association that offers Verification only.  Above ``dicom.max_associations``
associations: *rejected-transient / local-limit-exceeded* (2, 3, 2).  Stalled, silent
and flooding peers are handled below this module (:mod:`.peerguard`).

**C-STORE.**  All storage SOP classes, every transfer syntax pynetdicom knows (incl.
JPEG, JPEG-LS, JPEG 2000, RLE, deflate).  For each instance: parse the header, validate
Study/Series/SOP Instance UIDs (:mod:`.uids`), archive durably (:mod:`.store`), update
the series record and classification (:mod:`.series`), record the study as pending
(:mod:`.studies`) — and only then return *Success*.  Failure statuses:

* ``0xA700`` out of resources: the archive could not be written (disk full, I/O error)
* ``0xC210`` cannot understand: not a readable DICOM data set
* ``0xC220`` cannot understand: a UID is missing or not a valid UID (e.g. ``../../x``);
  nothing is written
* ``0xC221`` cannot understand: the data set's SOP Instance UID differs from the request's
* ``0xC222`` cannot understand: a different data set under an archived SOP Instance UID
  that the replace policy (``dicom.replace``) does not let this caller replace; nothing
  is written
* ``0xC223`` cannot understand: this caller may not store through this AE title (normally
  it is not even offered a storage presentation context)

(``0x0124`` *Refused: not authorized* would say it better, but it is not among the C-STORE
statuses of PS3.4 and senders such as dcmtk report it as an unknown status.)

Logs name AE titles, addresses, job numbers and short UID hashes, never patient data.
"""
from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from . import node_metrics as nm
from . import peerguard, pynetdicom_patches
from .buckets import BucketRegistry
from .config import NodeConfig
from .dicomio import HeaderError, HeaderReader, check_complete
from .logsafe import printable
from .model import AE_TITLE
from .series import SeriesRecords
from .store import DicomArchive, SpoolBuffer, StoreOutcome, file_meta
from .studies import StudyTracker, uid_ref
from .telemetry import NodeTelemetry
from .uids import UIDError, check_uid

__all__ = ["StorageReceiver", "STATUS_OUT_OF_RESOURCES", "STATUS_NOT_DICOM", "STATUS_BAD_UID",
           "STATUS_UID_MISMATCH", "STATUS_CONFLICT", "STATUS_NOT_ALLOWED"]

log = logging.getLogger("magickbox.receiver")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_DICOM = 0xC210
STATUS_BAD_UID = 0xC220
STATUS_UID_MISMATCH = 0xC221
STATUS_CONFLICT = 0xC222
STATUS_NOT_ALLOWED = 0xC223

def _raw_text(dataset: Any, tag: int) -> str:
    """A UID element's text without pydicom's conversion (validated by us instead)."""
    elem = dataset.get_item(tag) if tag in dataset else None
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return "" if value is None else str(value).rstrip("\x00 ")


class StorageReceiver:
    """Runs the DICOM listener of a node."""

    def __init__(self, config: NodeConfig, archive: DicomArchive, registry: BucketRegistry,
                 tracker: StudyTracker, series: SeriesRecords, reader: HeaderReader,
                 telemetry: NodeTelemetry):
        self.config = config
        self.archive = archive
        self.registry = registry
        self.tracker = tracker
        self.series = series
        self.reader = reader
        self.telemetry = telemetry
        self.lenient = config.dicom.uid_grammar == "lenient"
        self.server: Any = None
        self._accepting = True
        d = config.dicom
        self.guard = peerguard.ConnectionGuard(peerguard.GuardLimits(
            association_timeout=d.association_timeout, idle_timeout=d.idle_timeout,
            max_associations=d.max_associations, max_pending_connections=d.max_pending_connections,
            max_connections_per_address=d.max_connections_per_address, max_pdu=d.max_pdu))
        self._peers: dict[object, tuple[str, str, str, bool]] = {}   # assoc -> called, calling, ip, may store
        self._peers_lock = threading.Lock()

    # -- setup ---------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.dicom.tls
        if tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            ctx.load_verify_locations(str(tls.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
        return ctx

    def start(self, listen_socket: Any = None, accept: bool = True) -> int:
        """Start listening (on ``listen_socket`` if given: the node's listening socket,
        opened by another process); returns the port.  ``accept=False``: do not accept
        connections, they are handed in with :meth:`take_connection`."""
        threshold = int(self.config.dicom.spool_threshold_mb * 1024 * 1024)
        _config.LOG_HANDLER_LEVEL = "none"          # pynetdicom's own logging can show patient data
        # data sets spill to the archive's tmp directory (SpoolBuffer) instead of a BytesIO
        pynetdicom_patches.apply(spool_factory=lambda: self.archive.new_spool(threshold))
        # pynetdicom logs peer-controlled text verbatim, over several lines per event; the
        # events that matter are logged by this module and peerguard, one line each
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        d = self.config.dicom
        ae = AE(ae_title=d.ae_title)
        ae.maximum_pdu_size = d.max_pdu
        ae.require_called_aet = False
        # the guard enforces max_associations; pynetdicom's own count (all connection
        # threads, pending ones included) is only a backstop
        ae.maximum_associations = 4 * (d.max_associations + d.max_pending_connections)
        ae.network_timeout = d.idle_timeout
        ae.acse_timeout = d.association_timeout       # also pynetdicom's ARTIM timer
        ae.dimse_timeout = d.idle_timeout
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        self._verification_only = [cx for cx in ae.supported_contexts if cx.abstract_syntax == Verification]
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        self.server = ae.make_server((d.host, d.port), evt_handlers=handlers,
                                     server_class=peerguard.GuardedAssociationServer, guard=self.guard,
                                     tls_context=self._ssl_context(), listen_socket=listen_socket)
        self._accepting = accept
        if accept:
            thread = threading.Thread(target=self.server.serve_forever, name="dicom-listener", daemon=True)
            thread.start()
        ae._servers.append(self.server)
        port = self.server.server_address[1]
        log.info("DICOM listener on %s:%d (AE %s%s)", self.config.dicom.host, port, self.config.dicom.ae_title,
                 ", TLS" if self.config.dicom.tls else "")
        return port

    def take_connection(self, sock: Any) -> None:
        """Serve a connection another process accepted (what the accept loop does with
        its own: admission by the guard, then the association in its own thread)."""
        try:
            address = sock.getpeername()
        except OSError:
            sock.close()
            return
        server = self.server
        if server is None or not server.verify_request(sock, address):
            sock.close()
            return
        try:
            server.process_request(sock, address)
        except Exception:  # noqa: BLE001 - one connection, not the receiver
            server.handle_error(sock, address)
            server.shutdown_request(sock)

    def stop(self) -> None:
        if self.server is not None:
            if self._accepting:
                self.server.shutdown()
            else:
                self.server.server_close()
                self.server.ae._servers.remove(self.server)
            self.server = None

    # -- association ----------------------------------------------------------------------
    def is_own(self, called: str) -> bool:
        """The node's own AE title or one of the extra ones (archive only, no bucket)."""
        return called in self.config.dicom.own_ae_titles

    def may_store(self, called: str, calling: str, ip: str) -> bool:
        """Whether this caller may store through this called AE title (buckets: whoever may
        call them; the node's own AE titles: only callers their access table names)."""
        rule = self.config.dicom.access.get(called)
        if self.is_own(called) and self.registry.by_ae_title(called) is None:
            return rule is not None and rule.allows(calling, ip)
        return rule is None or rule.allows(calling, ip)

    def accepts(self, called: str, calling: str, ip: str) -> tuple[bool, tuple[int, int, int] | None, str]:
        """(accept?, reject reason (result, source, diagnostic), explanation)."""
        called, calling = called.strip(), calling.strip()
        if not AE_TITLE.fullmatch(calling):
            return False, (0x01, 0x01, 0x03), "the calling AE title is not a DICOM AE title"
        if not AE_TITLE.fullmatch(called):
            return False, (0x01, 0x01, 0x07), "the called AE title is not a DICOM AE title"
        bucket = self.registry.by_ae_title(called)
        own = self.is_own(called)
        if bucket is None and not own:
            return False, (0x01, 0x01, 0x07), f"called AE title {called!r} is not an installed bucket"
        if bucket is not None and not bucket.enabled and not own:
            return False, (0x01, 0x01, 0x07), f"bucket {called!r} is disabled"
        rule = self.config.dicom.access.get(called)
        if rule is not None and not own and not rule.allows(calling, ip):
            return False, (0x01, 0x01, 0x03), f"{calling!r} at {ip} is not allowed to call {called!r}"
        return True, None, ""

    def _on_requested(self, event: Any) -> None:
        rq = event.assoc.requestor.primitive
        called = str(rq.called_ae_title).strip()
        calling = str(rq.calling_ae_title).strip()
        ip = event.assoc.requestor.address
        ok, reason, why = self.accepts(called, calling, ip)
        if ok and self.guard.over_capacity():
            ok, reason = False, (0x02, 0x03, 0x02)
            why = f"{self.config.dicom.max_associations} associations already (dicom.max_associations)"
        if not ok:
            log.warning("rejected association from %s (%s) to %s: %s", printable(calling), ip, printable(called),
                        why)
            self.telemetry.count(nm.REJECTED)
            event.assoc.acse.send_reject(*reason)
            event.assoc.kill()          # waits until the A-ASSOCIATE-RJ has been sent
            return
        store = self.may_store(called, calling, ip)
        if not store:                   # the node's own AE title: C-ECHO only
            event.assoc.acceptor.supported_contexts = list(self._verification_only)
            log.warning("association from %s (%s) to %s: storage through %s is not allowed for %r "
                        "(dicom.access.%s); C-ECHO only", calling, ip, called, called, calling, called)
        with self._peers_lock:
            self._peers[event.assoc] = (called, calling, ip, store)
        self.telemetry.count(nm.ASSOCIATIONS)

    def _on_aborted(self, event: Any) -> None:
        conn = getattr(event.assoc, "_hops_connection", None)
        if conn is not None and conn.aborted:
            return                      # the guard aborted it and said why
        with self._peers_lock:
            known = self._peers.get(event.assoc)
        if known is not None:
            log.warning("association from %s (%s) to %s aborted", known[1], known[2], known[0])

    def _on_close(self, event: Any) -> None:
        with self._peers_lock:
            known = self._peers.pop(event.assoc, None)
        if known is not None:
            self.series.flush()
            self.tracker.association_ended(event.assoc)

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    # -- C-STORE ---------------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        buffer = event.request.DataSet
        try:
            return self._store(event, buffer)
        finally:
            if isinstance(buffer, SpoolBuffer):
                buffer.discard()

    def _refuse(self, status: int, called: str, calling: str, ip: str, why: str) -> int:
        log.warning("refused an instance from %s (%s) to %s: %s (status 0x%04X)", calling, ip, called, why, status)
        self.telemetry.count(nm.REJECTED)
        return status

    def _store(self, event: Any, buffer: Any) -> int:
        with self._peers_lock:
            called, calling, ip, allowed = self._peers.get(event.assoc, ("?", "?", "?", False))
        if not allowed:
            return self._refuse(STATUS_NOT_ALLOWED, called, calling, ip, "this caller may not store here")
        request = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        if not isinstance(buffer, SpoolBuffer):   # should not happen; keep working anyway
            data = buffer.getvalue() if buffer is not None else b""
            buffer = SpoolBuffer(self.archive.tmp)
            buffer.write(data)
        try:
            header = self.reader.read(buffer, transfer_syntax)
            check_complete(buffer, transfer_syntax)         # a data set cut short is not acknowledged
        except HeaderError as exc:
            return self._refuse(STATUS_NOT_DICOM, called, calling, ip, str(exc))
        study, series, sop = (_raw_text(header, tag) for tag in (0x0020000D, 0x0020000E, 0x00080018))
        if not (study or series or sop):
            return self._refuse(STATUS_NOT_DICOM, called, calling, ip,
                                "not a DICOM instance (no SOP, study or series UID)")
        try:
            sop_class = check_uid(str(request.AffectedSOPClassUID or ""), "SOP Class UID", self.lenient)
            command_sop = check_uid(str(request.AffectedSOPInstanceUID or ""), "Affected SOP Instance UID",
                                    self.lenient)
            study = check_uid(study, "Study Instance UID", self.lenient)
            series = check_uid(series, "Series Instance UID", self.lenient)
            sop = check_uid(sop, "SOP Instance UID", self.lenient)
        except UIDError as exc:
            return self._refuse(STATUS_BAD_UID, called, calling, ip, str(exc))
        if sop != command_sop:
            return self._refuse(STATUS_UID_MISMATCH, called, calling, ip,
                                "the data set's SOP Instance UID differs from the C-STORE request's")
        study_key = self.tracker.study_opened(event.assoc, called, calling, ip, study)
        self.tracker.instance_arriving(study_key, series, sop)
        try:
            stored = self.archive.store(study, series, sop, file_meta(sop_class, sop, transfer_syntax, calling),
                                        buffer, sender=calling)
        except OSError as exc:
            log.error("cannot archive an instance of study#%s: %s", uid_ref(study), exc)
            self.telemetry.count(nm.REJECTED)
            return STATUS_OUT_OF_RESOURCES
        if stored.outcome is StoreOutcome.REFUSED:
            return self._refuse(STATUS_CONFLICT, called, calling, ip,
                                f"study#{uid_ref(study)} already holds this SOP Instance UID with a different data "
                                f"set from another sender (dicom.replace = {self.archive.replace})")
        try:
            self.series.update(study, series, header, stored.outcome is StoreOutcome.NEW)
        except OSError as exc:   # derived data; the instance itself is safe
            log.error("series record of study#%s not updated: %s", uid_ref(study), exc)
        self.tracker.instance_stored(study_key, series, sop)
        self.telemetry.count(nm.INSTANCES_RECEIVED)
        if stored.outcome is not StoreOutcome.NEW:
            log.info("duplicate instance in study#%s from %s: %s", uid_ref(study), calling, stored.outcome.value)
        return STATUS_SUCCESS
