"""Queue jobs on gearman and keep the job store true (the node side of the queue).

* A job record (from study completion or backfill) is prepared — ``jobs/<id>/info.json``
  and a hard-link snapshot of its input in ``input/`` (the instances its association set
  delivered, or the whole study for ``input_scope = 'study'``) — and submitted as a
  **background** gearman job to the function ``bucket<AETitle>``, with the unique key
  ``hops-job-<id>`` (gearmand merges a re-submission with a job it still holds).
  Submissions are serialised: study completion and the reconciler never prepare or
  submit the same job at the same time, and a job submitted since the reconciler looked
  is not submitted again.
* The reconciler (every ``interval`` seconds, and at start-up) looks at each queued or
  running job's directory: a committed ``result`` becomes the final status in the
  database exactly once; a live ``active`` claim marks the job running; a job whose
  attempt died (stale claim) or failed for infrastructure reasons is re-submitted until
  the bucket's ``retries`` are used up, then marked failed; a queued job nobody claimed
  for ``resubmit_after`` seconds (gearmand restarted without its queue) is re-submitted.
* At start-up everything unfinished is re-submitted: jobs that were queued or running
  when the node, gearmand or a worker died run (once) without anyone intervening.

With no gearmand configured the node runs an embedded job server (``gear.Server``, in
memory; the database is the persistent queue) and an embedded worker.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import gear

from . import node_metrics as nm
from .buckets import BucketRegistry
from .db import Database, Job
from .jobfiles import JobDir
from .layout import DataLayout
from .model import ACTIVE_STATUSES, INFRASTRUCTURE_ERROR, AttemptOutcome, JobRequest, JobStatus
from .periodic import Periodic
from .store import DicomArchive
from .studies import uid_ref

__all__ = ["Dispatcher", "EmbeddedJobServer"]

log = logging.getLogger("magickbox.jobqueue")


class EmbeddedJobServer:
    """An in-process gearman server on 127.0.0.1 (for nodes without gearmand)."""

    def __init__(self, port: int = 0):
        self.server = gear.Server(port=port, host="127.0.0.1")
        self.port = self.server.port          # the bound port when 0 was asked for

    def stop(self) -> None:
        self.server.shutdown()


class Dispatcher:
    def __init__(self, layout: DataLayout, db: Database, archive: DicomArchive, registry: BucketRegistry,
                 servers: list[tuple[str, int]], count: Callable[[str], None] = lambda name: None,
                 interval: float = 0.2, resubmit_after: float = 60.0):
        self.layout = layout
        self.db = db
        self.archive = archive
        self.registry = registry
        self.servers = servers
        self.count = count
        self.interval = interval
        self.resubmit_after = resubmit_after
        self.client = gear.Client("magickbox-node")
        for host, port in servers:
            self.client.addServer(host, port)
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._loop = Periodic("dispatcher", interval, self.reconcile, log, "reconciliation failed")
        self._warned: set[str] = set()
        self.last_start_latency = 0.0

    # -- submission -----------------------------------------------------------------------
    def submit(self, job: Job, seen_submitted: float | None = None) -> bool:
        """Prepare and submit one job; False if it could not be submitted now.
        ``seen_submitted``: the last submission time the caller saw (None: never); if the
        job was submitted since, it is not submitted again."""
        with self._submit_lock:
            if self.db.last_submission(job.id) != seen_submitted:
                return True                          # someone else submitted it meanwhile
            current = self.db.job(job.id)
            if current is None or current.status not in ACTIVE_STATUSES:
                return False
            return self._submit(current)

    def _submit(self, job: Job) -> bool:
        bucket = self.registry.by_ae_title(job.bucket_ae)
        if bucket is None:
            self.registry.refresh(force=True)         # installed a moment ago?
            bucket = self.registry.by_ae_title(job.bucket_ae)
        if bucket is None:
            if self.db.commit_result(job.id, JobStatus.FAILED, f"bucket {job.bucket_ae} is not installed", None,
                                     None, time.time(), None, 0):
                self.count(nm.JOB_STATUS_COUNTERS[JobStatus.FAILED])
            return False
        if not bucket.enabled:
            self._warn_once(f"disabled-{job.bucket_ae}", f"bucket {job.bucket_ae} is disabled: its jobs wait")
            return False
        jobdir = JobDir.of(self.layout, job.id)
        info = job.info_json()
        info.update({"bucket": {"name": bucket.name, "version": bucket.version, "AETitle": bucket.ae_title}})
        instances = self.db.job_instances(job.id) if job.input_scope == "delivered" else None
        jobdir.prepare(info, self.archive.root / job.study_uid, instances)
        gjob = gear.Job(bucket.function.encode(), JobRequest(job.id, job.bucket_ae).encode(), unique=f"hops-job-{job.id}".encode())
        try:
            with self._lock:
                self.client.submitJob(gjob, background=True, timeout=10)
        except Exception as exc:
            self._warn_once("submit", f"cannot submit jobs to gearman ({exc}); they stay queued and are retried")
            return False
        self._warned.discard("submit")
        self.db.mark_submitted(job.id, time.time(), bucket.version)
        log.info("job %d queued for %s (study#%s, %d instances)", job.id, job.bucket_ae, uid_ref(job.study_uid),
                 job.instance_count)
        return True

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    # -- reconciliation ---------------------------------------------------------------------
    def _commit(self, job: Job, outcome: AttemptOutcome) -> None:
        jobdir = JobDir.of(self.layout, job.id)
        earlier = len(list(jobdir.attempts.iterdir())) if jobdir.attempts.is_dir() else 0
        if self.db.commit_result(job.id, outcome.status, outcome.message, outcome.exit_code, outcome.started,
                                 outcome.finished, outcome.worker, outcome.log_size, attempts=earlier + 1):
            counter = nm.JOB_STATUS_COUNTERS.get(outcome.status)
            if counter:
                self.count(counter)
            if outcome.started and job.completed:
                self.last_start_latency = max(0.0, outcome.started - job.completed)
            log.info("job %d (%s) %s in %.1f s%s", job.id, job.bucket_ae, outcome.status,
                     (outcome.finished or 0) - (outcome.started or 0),
                     f": {outcome.message}" if outcome.message else "")

    def reconcile(self) -> None:
        now = time.time()
        for job, submitted, submissions in self.db.unfinished():
            jobdir = JobDir.of(self.layout, job.id)
            outcome = jobdir.committed()
            if outcome is not None:
                self._commit(job, outcome)
                continue
            claim = jobdir.active_claim()
            if claim is not None:
                if job.status != JobStatus.RUNNING or job.worker != claim.worker:
                    self.db.mark_running(job.id, claim.worker, claim.started)
                continue
            if jobdir.cancel_requested():
                if self.db.commit_result(job.id, JobStatus.CANCELLED, "cancelled before it ran", None, None, now,
                                         None, 0):
                    self.count(nm.JOB_STATUS_COUNTERS[JobStatus.CANCELLED])
                continue
            bucket = self.registry.by_ae_title(job.bucket_ae)
            attempts = sorted(jobdir.attempts.iterdir()) if jobdir.attempts.is_dir() else []
            finished_attempts = [a for a in attempts if (a / "outcome.json").exists()]
            died = len(attempts) - len(finished_attempts)
            failed_infra = [o for o in jobdir.attempt_outcomes() if o.status == INFRASTRUCTURE_ERROR]
            tries = len(failed_infra) + died
            retries = bucket.run.retries if bucket else 0
            if tries > retries:
                last = failed_infra[-1].message if failed_infra else "the worker died during the run"
                if self.db.commit_result(job.id, JobStatus.FAILED, f"gave up after {tries} attempt(s): {last}", None,
                                         None, now, None, 0):
                    self.count(nm.JOB_STATUS_COUNTERS[JobStatus.FAILED])
                    log.error("job %d (%s) failed: %s", job.id, job.bucket_ae, last)
                continue
            # an attempt ended without a result (died / infrastructure error) since the
            # last submission, or nobody took the job for a long time: submit again
            latest_attempt = max((a.stat().st_mtime for a in attempts), default=0.0)
            if submitted is None or latest_attempt >= submitted or now - submitted > self.resubmit_after:
                if tries and submitted is not None and latest_attempt >= submitted:
                    log.warning("job %d: attempt %d ended without a result; submitting again", job.id, tries)
                self.submit(job, seen_submitted=submitted)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        try:
            self.client.shutdown()
        except Exception:
            pass
