"""Gearman workers that run buckets (``magickbox worker``, and embedded in ``serve``).

Each enabled bucket is the gearman function ``bucket<AETitle>``; a worker registers the
functions of the buckets it may run (``--buckets``, default all), with as many
connections per bucket as the bucket's ``concurrency``.  For every job it receives it:

1. skips it if the job already has a committed result or a live attempt elsewhere;
2. claims it (``active`` file, heartbeat), creates a fresh attempt directory;
3. runs the bucket with the container or process runner;
4. decides the status from exit code and ``proc.json``, writes ``outcome.json`` and
   commits the attempt (exactly once per job), then reports WORK_COMPLETE.

An infrastructure failure (engine unreachable, image missing) is written as an outcome
with status ``error`` and *not* committed: the node retries the job up to the bucket's
``retries``.  Workers need the data root (local, or shared between hosts) but never the
database.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Iterable

import gear

from .buckets import BucketInfo, BucketRegistry
from .jobfiles import JobDir, decide_status, read_proc_json
from .layout import DataLayout
from .model import INFRASTRUCTURE_ERROR, AttemptOutcome, JobRequest, JobStatus
from .periodic import Periodic
from .runners import ContainerRunner, RunnerError, RunRequest, remove_snapshot, runner_for

__all__ = ["Worker", "run_attempt", "parse_servers"]

log = logging.getLogger("magickbox.worker")


def parse_servers(specs: Iterable[str]) -> list[tuple[str, int]]:
    out = []
    for spec in specs:
        host, _, port = spec.strip().rpartition(":")
        if not host:
            host, port = port, "4730"
        out.append((host, int(port)))
    return out


def run_attempt(jobdir: JobDir, bucket: BucketInfo, worker_id: str, engine_url: str | None = None,
                runners: dict | None = None) -> AttemptOutcome | None:
    """Run one attempt of a job if it can be claimed; returns its outcome (None if the
    job was already done or taken)."""
    claim = jobdir.claim(worker_id)
    if claim is None:
        return None
    for leftover in jobdir.path.glob(".input-*"):    # the private input copy of an attempt that died
        remove_snapshot(leftover)
    try:
        log_path = claim.dir / "processing.log"
        log_path.touch()
        if jobdir.cancel_requested():
            outcome = AttemptOutcome(claim.attempt, worker_id, JobStatus.CANCELLED, "cancelled before it ran", None, time.time(),
                              time.time(), 0)
            jobdir.write_outcome(claim, outcome)
            jobdir.commit(claim)
            return outcome
        bucket.memory_dir.mkdir(parents=True, exist_ok=True)
        runner = runner_for(bucket, engine_url, runners)
        job_id = jobdir.path.name
        if isinstance(runner, ContainerRunner):
            runner.remove_containers(**{"hops.job": job_id})     # left by a dead attempt
        started = time.time()
        try:
            result = runner.run(RunRequest(
                bucket=bucket, input_dir=jobdir.input, output_dir=claim.dir / "output",
                memory_dir=bucket.memory_dir, log_path=log_path,
                labels={"hops.job": job_id, "hops.attempt": claim.attempt, "hops.worker": worker_id},
                cancel_requested=jobdir.cancel_requested, scratch_dir=jobdir.path))
        except RunnerError as exc:
            outcome = AttemptOutcome(claim.attempt, worker_id, INFRASTRUCTURE_ERROR, str(exc), None, started, time.time(),
                              log_path.stat().st_size)
            jobdir.write_outcome(claim, outcome)
            log.warning("job %s: infrastructure failure: %s", job_id, exc)
            return outcome
        status, message = decide_status(result.exit_code, result.timed_out, result.cancelled,
                                        read_proc_json(claim.dir / "output" / "proc.json", claim.dir / "proc.json"),
                                        bucket.run.timeout)
        outcome = AttemptOutcome(claim.attempt, worker_id, status, message, result.exit_code, result.started,
                          result.finished, log_path.stat().st_size)
        jobdir.write_outcome(claim, outcome)
        if jobdir.commit(claim):
            log.info("job %s (%s): %s%s", job_id, bucket.ae_title, status, f" - {message}" if message else "")
        else:
            log.warning("job %s: another attempt committed first; this attempt is kept in attempts/", job_id)
        return outcome
    finally:
        claim.release()


class Worker:
    """Connects to gearman servers and runs the buckets it is allowed to run."""

    def __init__(self, layout: DataLayout, servers: list[tuple[str, int]], buckets: list[str] | None = None,
                 engine_url: str | None = None, worker_id: str | None = None, refresh_seconds: float = 2.0,
                 route_senders: int = 0):
        self.layout = layout
        self.servers = servers
        self.allowed = set(buckets) if buckets else None
        self.engine_url = engine_url
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.registry = BucketRegistry(layout.buckets, refresh_seconds=refresh_seconds)
        self.refresh_seconds = refresh_seconds
        self._runners: dict = {}
        self._threads: dict[str, list[tuple[threading.Thread, gear.Worker]]] = {}
        self._stop = threading.Event()
        self._manager = Periodic("worker-manager", refresh_seconds, self._sync_functions, log,
                                 "cannot refresh the bucket list")
        self.jobs_done = 0
        self.route_senders = route_senders      # connections serving the 'route' function (result sends)
        self._route_threads: list[tuple[threading.Thread, gear.Worker]] = []

    def _allowed(self, bucket: BucketInfo) -> bool:
        if not bucket.enabled:
            return False
        return self.allowed is None or bucket.ae_title in self.allowed or bucket.directory.name in self.allowed

    def _connect(self, name: str) -> gear.Worker:
        w = gear.Worker(f"{self.worker_id}-{name}")
        for host, port in self.servers:
            w.addServer(host, port)
        w.waitForServer()
        return w

    def _serve(self, function: str, gw: gear.Worker) -> None:
        while not self._stop.is_set():
            try:
                job = gw.getJob()
            except gear.InterruptedError:
                return
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("gearman connection problem; retrying")
                time.sleep(1)
                continue
            try:
                self._handle(job)
            except Exception as exc:
                log.exception("job %r failed in the worker", job.arguments[:200])
                try:
                    job.sendWorkException(str(exc).encode())
                except Exception:
                    pass

    def _handle(self, job) -> None:
        from .results.route_worker import ROUTE_FUNCTION, RouteRequest, run_route_send
        if job.name == ROUTE_FUNCTION:
            route = RouteRequest.decode(job.arguments)
            sent = run_route_send(self.layout, route, self.worker_id, self._stop)
            job.sendWorkComplete(json.dumps({"send": route.send_id, "attempt": route.attempt,
                                             "ok": sent.get("ok") if sent else None}).encode())
            return
        request = JobRequest.decode(job.arguments)
        jobdir = JobDir.of(self.layout, request.job_id)
        bucket = self.registry.by_ae_title(request.bucket_ae)
        if bucket is None:
            log.error("job %s: bucket %s is not installed on this worker", request.job_id, request.bucket_ae)
            job.sendWorkFail()
            return
        outcome = run_attempt(jobdir, bucket, self.worker_id, self.engine_url, self._runners)
        self.jobs_done += 1
        job.sendWorkComplete(json.dumps({"job": request.job_id,
                                         "status": str(outcome.status) if outcome else "skipped"}).encode())

    def _sync_functions(self) -> None:
        wanted = {b.function: b for b in self.registry.all() if self._allowed(b)}
        for function, bucket in wanted.items():
            have = self._threads.setdefault(function, [])
            while len(have) < bucket.run.concurrency:
                gw = self._connect(function)
                gw.registerFunction(function)
                t = threading.Thread(target=self._serve, args=(function, gw), name=f"worker-{function}", daemon=True)
                t.start()
                have.append((t, gw))
                log.info("worker %s: serving %s (%d)", self.worker_id, function, len(have))
        for function in [f for f in self._threads if f not in wanted]:
            for _, gw in self._threads.pop(function):
                gw.stopWaitingForJobs()
                gw.shutdown()
            log.info("worker %s: no longer serving %s", self.worker_id, function)

    def start(self) -> None:
        self.registry.load()
        self._sync_functions()
        from .results.route_worker import ROUTE_FUNCTION
        while len(self._route_threads) < self.route_senders:
            gw = self._connect(ROUTE_FUNCTION)
            gw.registerFunction(ROUTE_FUNCTION)
            t = threading.Thread(target=self._serve, args=(ROUTE_FUNCTION, gw), name="worker-route", daemon=True)
            t.start()
            self._route_threads.append((t, gw))
        if self.route_senders:
            log.info("worker %s: serving %s (%d)", self.worker_id, ROUTE_FUNCTION, self.route_senders)
        self._manager.start()

    def stop(self) -> None:
        self._stop.set()
        self._manager.stop()
        for threads in [*self._threads.values(), self._route_threads]:
            for _, gw in threads:
                try:
                    gw.stopWaitingForJobs()
                    gw.shutdown()
                except Exception:
                    pass
        self._threads.clear()
        self._route_threads.clear()

    @property
    def functions(self) -> list[str]:
        return sorted(self._threads) + (["route"] if self._route_threads else [])
