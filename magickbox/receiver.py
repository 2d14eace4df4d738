"""The storage SCP (pynetdicom): association acceptance, C-ECHO and durable C-STORE.

**Acceptance.**  The called AE title must be an installed, enabled bucket, the node's
own AE title or one of ``dicom.extra_ae_titles``; otherwise the association is rejected
with A-ASSOCIATE-RJ *rejected-permanent / service-user / called-AE-title-not-recognized*
(1, 1, 7).  A bucket's optional allow-list (``[dicom.access.<AETitle>]``) rejects other
callers with *calling-AE-title-not-recognized* (1, 1, 3).

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

Logs name AE titles, addresses, job numbers and short UID hashes, never patient data.
"""
from __future__ import annotations

import logging
import ssl
import threading
from typing import Any, Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom import dimse_messages
from pynetdicom.sop_class import Verification

from . import fastpath
from . import node_metrics as nm
from .buckets import BucketRegistry
from .config import NodeConfig
from .dicomio import HeaderError, HeaderReader
from .series import SeriesRecords
from .store import DicomArchive, SpoolBuffer, StoreOutcome, file_meta
from .studies import StudyTracker, uid_ref
from .telemetry import NodeTelemetry
from .uids import UIDError, check_uid

__all__ = ["StorageReceiver", "STATUS_OUT_OF_RESOURCES", "STATUS_NOT_DICOM", "STATUS_BAD_UID",
           "STATUS_UID_MISMATCH"]

log = logging.getLogger("magickbox.receiver")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_DICOM = 0xC210
STATUS_BAD_UID = 0xC220
STATUS_UID_MISMATCH = 0xC221

# pynetdicom keeps an incoming data set in a BytesIO; a SpoolBuffer spills large ones
# to the archive's tmp directory instead (the factory is set by the running receiver).
_spool_factory: Callable[[], SpoolBuffer] | None = None
_original_init = dimse_messages.DIMSEMessage.__init__


def _spooling_init(self: Any) -> None:
    _original_init(self)
    if _spool_factory is not None:
        self.data_set = _spool_factory()


dimse_messages.DIMSEMessage.__init__ = _spooling_init  # type: ignore[method-assign]


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
        self._peers: dict[object, tuple[str, str, str]] = {}
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

    def start(self) -> int:
        """Start listening; returns the bound port."""
        global _spool_factory
        threshold = int(self.config.dicom.spool_threshold_mb * 1024 * 1024)
        _spool_factory = lambda: self.archive.new_spool(threshold)  # noqa: E731
        _config.LOG_HANDLER_LEVEL = "none"          # pynetdicom's own logging can show patient data
        fastpath.apply()
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self.config.dicom.ae_title)
        ae.maximum_pdu_size = self.config.dicom.max_pdu
        ae.require_called_aet = False
        ae.maximum_associations = 64
        ae.network_timeout = 120
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        self.server = ae.start_server((self.config.dicom.host, self.config.dicom.port), block=False,
                                      evt_handlers=handlers, ssl_context=self._ssl_context())
        port = self.server.server_address[1]
        log.info("DICOM listener on %s:%d (AE %s%s)", self.config.dicom.host, port, self.config.dicom.ae_title,
                 ", TLS" if self.config.dicom.tls else "")
        return port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- association ----------------------------------------------------------------------
    def accepts(self, called: str, calling: str, ip: str) -> tuple[bool, tuple[int, int, int] | None, str]:
        """(accept?, reject reason (result, source, diagnostic), explanation)."""
        called = called.strip()
        bucket = self.registry.by_ae_title(called)
        own = called == self.config.dicom.ae_title or called in self.config.dicom.extra_ae_titles
        if bucket is None and not own:
            return False, (0x01, 0x01, 0x07), f"called AE title {called!r} is not an installed bucket"
        if bucket is not None and not bucket.enabled and not own:
            return False, (0x01, 0x01, 0x07), f"bucket {called!r} is disabled"
        rule = self.config.dicom.access.get(called)
        if rule is not None and not rule.allows(calling, ip):
            return False, (0x01, 0x01, 0x03), f"{calling!r} at {ip} is not allowed to call {called!r}"
        return True, None, ""

    def _on_requested(self, event: Any) -> None:
        rq = event.assoc.requestor.primitive
        called = str(rq.called_ae_title).strip()
        calling = str(rq.calling_ae_title).strip()
        ip = event.assoc.requestor.address
        ok, reason, why = self.accepts(called, calling, ip)
        if not ok:
            log.warning("rejected association from %s (%s) to %s: %s", calling, ip, called, why)
            self.telemetry.count(nm.REJECTED)
            event.assoc.acse.send_reject(*reason)
            event.assoc.kill()          # waits until the A-ASSOCIATE-RJ has been sent
            return
        with self._peers_lock:
            self._peers[event.assoc] = (called, calling, ip)
        self.telemetry.count(nm.ASSOCIATIONS)

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
            called, calling, ip = self._peers.get(event.assoc, ("?", "?", "?"))
        request = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        if not isinstance(buffer, SpoolBuffer):   # should not happen; keep working anyway
            data = buffer.getvalue() if buffer is not None else b""
            buffer = SpoolBuffer(self.archive.tmp)
            buffer.write(data)
        try:
            header = self.reader.read(buffer, transfer_syntax)
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
        try:
            stored = self.archive.store(study, series, sop, file_meta(sop_class, sop, transfer_syntax, calling),
                                        buffer)
        except OSError as exc:
            log.error("cannot archive an instance of study#%s: %s", uid_ref(study), exc)
            self.telemetry.count(nm.REJECTED)
            return STATUS_OUT_OF_RESOURCES
        try:
            self.series.update(study, series, header, stored.outcome is StoreOutcome.NEW)
        except OSError as exc:   # derived data; the instance itself is safe
            log.error("series record of study#%s not updated: %s", uid_ref(study), exc)
        self.tracker.instance_stored(study_key)
        self.telemetry.count(nm.INSTANCES_RECEIVED)
        if stored.outcome is not StoreOutcome.NEW:
            log.info("duplicate instance in study#%s from %s: %s", uid_ref(study), calling, stored.outcome.value)
        return STATUS_SUCCESS
