"""A magickbox node: wires the stages together and runs them in one process.

receive (:mod:`.receiver`) → archive (:mod:`.store`) → classify (:mod:`.series`) →
complete (:mod:`.studies`) → job record (:mod:`.db`) → queue (:mod:`.jobqueue`, gearman) →
run (:mod:`.worker`, :mod:`.runners`) → route (:mod:`.results.outflow`, sends by
:mod:`.results.route_worker`) / measure (:mod:`.results.measure_stage`); node metrics
(:mod:`.telemetry`) and the REST API and web UI (:mod:`.api`).
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import node_metrics as nm
from .buckets import BucketRegistry
from .classify import ClassifyRules
from .config import ConfigError, NodeConfig
from .db import Database, Job
from .dicomio import HeaderReader
from .jobqueue import Dispatcher, EmbeddedJobServer
from .model import JobStatus
from .receiver import StorageReceiver
from .receivers import ReceiverPool
from .results.measure_stage import MeasureStage
from .results.outflow import RouteStage
from .results.routing import RoutingError
from .series import SeriesRecords
from .store import DicomArchive, make_private_dir
from .studies import StudyTracker
from .telemetry import NodeTelemetry
from .worker import Worker

if TYPE_CHECKING:
    from .api.server import HttpServer

__all__ = ["Node"]

log = logging.getLogger("magickbox.node")


class Node:
    """Validate everything at construction (bad buckets, rules or config raise), then
    :meth:`start` / :meth:`stop`, or :meth:`run` until SIGTERM/SIGINT."""

    def __init__(self, config: NodeConfig, on_job: Callable[[Job], None] | None = None):
        self.config = config
        self.layout = layout = config.layout
        make_private_dir(layout.root)
        make_private_dir(layout.jobs)
        self.registry = BucketRegistry(layout.buckets)
        self.registry.load()
        rules_path = layout.classify_rules
        self.rules = ClassifyRules.load(rules_path) if rules_path else ClassifyRules.empty()
        self.archive = DicomArchive(layout, fsync=config.dicom.fsync, replace=config.dicom.replace,
                                    spool_memory=int(config.dicom.spool_memory_mb * 1024 * 1024))
        self.db = Database(layout.database)
        self.series = SeriesRecords(layout, self.rules, shared=config.dicom.receivers > 1)
        self.telemetry = NodeTelemetry(config.node_name, config.graphite, config.graphite_interval, gauges={
            nm.QUEUE_LENGTH: lambda: self.db.count_jobs(JobStatus.QUEUED),
            nm.JOBS_RUNNING: lambda: self.db.count_jobs(JobStatus.RUNNING),
        })
        self._on_job_hooks: list[Callable[[Job], None]] = [on_job] if on_job else []
        self.tracker = StudyTracker(self.db, self.archive, self.series, config.dicom.quiet_seconds,
                                    on_job=self._job_created, makes_jobs=self._makes_jobs,
                                    input_scope=self._input_scope)
        self.job_server: EmbeddedJobServer | None = None
        if config.gearman_servers:
            servers = list(config.gearman_servers)
        else:
            self.job_server = EmbeddedJobServer()
            servers = [("127.0.0.1", self.job_server.port)]
        self.gearman_servers = servers
        try:
            self.routing = RouteStage(layout, self.db, config.routing, self._routing_address, servers,
                                      # the embedded server lives and dies with this process: what it
                                      # was given it still holds (it does not merge by unique key)
                                      resubmit_after=config.resubmit_after if config.gearman_servers else float("inf"))
        except RoutingError as exc:
            if self.job_server is not None:
                self.job_server.stop()
            self.db.close()
            raise ConfigError("routing.json", str(exc)) from None
        self.dispatcher = Dispatcher(layout, self.db, self.archive, self.registry, servers,
                                     count=self.telemetry.count,
                                     resubmit_after=config.resubmit_after if config.gearman_servers else float("inf"))
        self.measures = MeasureStage(layout, self.db, self.registry, config.measures, config.graphite)
        self.telemetry.gauges[nm.START_LATENCY] = lambda: self.dispatcher.last_start_latency
        self.worker = Worker(layout, servers, list(config.worker_buckets) or None, config.engine_url,
                             worker_id=f"{config.node_name}-embedded",
                             route_senders=config.routing.senders) if config.worker_enabled else None
        self.receiver = StorageReceiver(config, self.archive, self.registry, self.tracker, self.series,
                                        HeaderReader(self.rules.dicom_tags()), self.telemetry)
        self.receiver_pool: ReceiverPool | None = None        # [dicom] receivers > 1
        self._stop_requested = threading.Event()
        self.web: HttpServer | None = None
        self.dicom_port: int | None = None
        self.http_port: int | None = None
        self._stopped = threading.Event()

    def _routing_address(self) -> tuple[str, int]:
        """``$me`` / ``$port`` of routing.json: ``[routing]`` me/port, else the DICOM host
        (127.0.0.1 when it listens on every address) and the bound DICOM port."""
        host = self.config.routing.me or self.config.dicom.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return host, self.config.routing.port or self.dicom_port or self.config.dicom.port

    def _makes_jobs(self, called_ae: str) -> bool:
        return self.registry.by_ae_title(called_ae) is not None

    def _input_scope(self, called_ae: str, calling_ae: str) -> str:
        """``"study"`` if the bucket asks for the whole study (``"run": {"input":
        "study"}``) and the caller is one ``dicom.access.<AE>.whole_study_callers`` trusts
        with it; otherwise ``"delivered"``: what this caller sent."""
        bucket = self.registry.by_ae_title(called_ae)
        if bucket is None or bucket.run.input != "study":
            return "delivered"
        rule = self.config.dicom.access.get(called_ae)
        if rule is not None and calling_ae in rule.whole_study_callers:
            return "study"
        log.warning("bucket %s asks for the whole study, but %s is not in dicom.access.%s.whole_study_callers: "
                    "its job gets only what %s sent", called_ae, calling_ae, called_ae, calling_ae)
        return "delivered"

    def _job_created(self, job: Job) -> None:
        self.telemetry.count(nm.STUDIES_COMPLETED)
        self.dispatcher.submit(job, seen_submitted=None)
        for hook in self._on_job_hooks:
            hook(job)

    def start(self) -> None:
        logging.getLogger("gear").setLevel(logging.WARNING)   # gear logs every packet at INFO
        removed = self.archive.remove_partial_files()
        if removed:
            log.info("removed %d partial file(s) left by an interrupted write", removed)
        self.db.forget_submissions()            # everything unfinished is submitted again
        if self.worker is not None:
            self.worker.start()
        self.dispatcher.reconcile()
        self.dispatcher.start()
        self.measures.start()
        self.tracker.recover()
        self.tracker.start()
        self.telemetry.start()
        if self.config.dicom.receivers > 1:
            self.receiver_pool = ReceiverPool(self.config, self.telemetry.count, on_failure=self._stop_requested.set)
            self.dicom_port = self.receiver_pool.start()
            self.receiver.guard = self.receiver_pool      # type: ignore[assignment]  # its counts() for /api/health
        else:
            self.dicom_port = self.receiver.start()
        self.routing.start()
        from .api.server import HttpServer
        from .api.uploads import UploadLimits
        self.web = HttpServer(self, self.config.http_host, self.config.http_port,
                              UploadLimits(max_upload=self.config.http_max_upload_mb << 20),
                              cert=self.config.http_tls_cert, key=self.config.http_tls_key)
        self.http_port = self.web.start()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.receiver.stop()
        if self.receiver_pool is not None:
            self.receiver_pool.stop()
        if self.web is not None:
            self.web.stop()
        self.tracker.stop()
        if self.worker is not None:
            self.worker.stop()
        self.dispatcher.stop()
        self.measures.stop()
        self.routing.stop()
        if self.job_server is not None:
            self.job_server.stop()
        self.telemetry.stop()
        self.db.close()

    def run(self) -> None:
        stop = self._stop_requested

        def _signal(signum: int, _frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        print(f"magickbox node {self.config.node_name}: DICOM on port {self.dicom_port}, "
              f"HTTP on port {self.http_port}, data in {Path(self.config.data_dir).resolve()}", flush=True)
        try:
            stop.wait()
        finally:
            self.stop()
