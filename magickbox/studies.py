"""Study completion: when has a study arrived completely?

A study is identified by (called AE title, calling AE title, StudyInstanceUID).  It is
*complete* when every association that carried it has ended and no instance arrived for
``quiet_seconds``.  Completion creates one job record with the counts and the series
classification (:meth:`Database.complete_study`).

State is on disk: the first instance of a study in an association durably inserts (or
re-opens) its ``pending_studies`` row before that instance is archived; the time of
the latest instance is written at most every ``flush_seconds`` and when an association
ends.  After a restart every pending study counts as having no open association and
completes ``quiet_seconds`` after its last instance — a node killed in the middle of a
quiet period still creates the job.

Instances arriving after completion are never dropped: they open a new pending study,
which completes into a **follow-up job over the whole study** (``follow_up_of`` points
at the previous job of the same bucket, caller and study).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .db import Database, Job, PendingStudy, study_key
from .periodic import Periodic
from .series import SeriesRecords
from .store import DicomArchive

__all__ = ["StudyTracker", "uid_ref"]

log = logging.getLogger("magickbox.studies")


def uid_ref(uid: str) -> str:
    """A short, non-identifying reference to a UID for logs (``study#1a2b3c4d``)."""
    import hashlib
    return hashlib.sha256(uid.encode()).hexdigest()[:8]


class StudyTracker:
    def __init__(self, db: Database, archive: DicomArchive, series: SeriesRecords, quiet_seconds: float,
                 on_job: Callable[[Job], None] | None = None, flush_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time, makes_jobs: Callable[[str], bool] = lambda ae: True):
        """``makes_jobs(called_ae)``: False for AE titles that only archive (the node's own
        and extra AE titles); their studies complete without a job."""
        self.db = db
        self.archive = archive
        self.series = series
        self.quiet_seconds = quiet_seconds
        self.on_job = on_job
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.makes_jobs = makes_jobs
        self._lock = threading.Lock()
        self._known: set[str] = set()                     # pending keys with a durable row
        self._assoc_keys: dict[object, set[str]] = {}     # association -> keys it carried
        self._dirty: dict[str, tuple[float, int]] = {}    # key -> (last_received, new instances)
        self._loop: Periodic | None = None
        self.completed = 0

    # -- receive side ----------------------------------------------------------------
    def study_opened(self, assoc: object, called: str, calling: str, ip: str, study: str) -> str:
        """Call *before* archiving an instance: makes sure the study's pending row is on
        disk (so an instance that reaches the archive always leads to a job, even if the
        node dies right after).  Returns the study key for :meth:`instance_stored`."""
        key = study_key(called, calling, study)
        with self._lock:
            keys = self._assoc_keys.setdefault(assoc, set())
            first_in_assoc = key not in keys
            if first_in_assoc or key not in self._known:
                self.db.upsert_pending(key, called, calling, ip, study, self.clock(), new_association=first_in_assoc)
                keys.add(key)
                self._known.add(key)
        return key

    def instance_stored(self, key: str) -> None:
        """Call after an instance was archived (before acknowledging it)."""
        now = self.clock()
        with self._lock:
            last, count = self._dirty.get(key, (now, 0))
            self._dirty[key] = (max(last, now), count + 1)

    def association_ended(self, assoc: object) -> None:
        with self._lock:
            keys = self._assoc_keys.pop(assoc, set())
            self._flush_locked()
        if keys:
            self.db.association_ended(keys, self.clock())

    def _flush_locked(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            self.db.touch_pending(dirty)

    # -- completion ------------------------------------------------------------------
    def recover(self) -> int:
        """At start-up: forget associations of a previous process."""
        self.db.reset_open_associations()
        pending = self.db.pending()
        with self._lock:
            self._known = {p.key for p in pending}
        if pending:
            log.info("%d study/studies were pending at the last shutdown; they complete after the quiet period",
                     len(pending))
        return len(pending)

    def check(self) -> list[Job]:
        """Complete every study that is due; returns the jobs created."""
        with self._lock:
            self._flush_locked()
        now = self.clock()
        jobs = []
        for p in self.db.pending():
            if p.open_associations > 0 or now - p.last_received < self.quiet_seconds:
                continue
            with self._lock:
                if p.key in self._dirty or any(p.key in keys for keys in self._assoc_keys.values()):
                    continue   # an instance arrived meanwhile
                job = self._complete(p, now)
                self._known.discard(p.key)
            if job is not None:
                jobs.append(job)
        for job in jobs:
            if self.on_job is not None:
                try:
                    self.on_job(job)
                except Exception:
                    log.exception("job %d: post-completion hook failed (the job record is kept)", job.id)
        return jobs

    def _complete(self, p: PendingStudy, now: float) -> Job | None:
        if not self.makes_jobs(p.called_ae):
            self.db.drop_pending(p.key)
            log.info("study#%s received by %s from %s archived (no bucket, no job)", uid_ref(p.study_uid),
                     p.called_ae, p.calling_ae)
            return None
        series_count, instances = self.archive.study_counts(p.study_uid)
        classification = self.series.study_classification(p.study_uid)
        job = self.db.complete_study(p, now, series_count, instances, classification)
        if job is None:
            log.warning("pending study#%s for %s from %s had no archived instance; dropped",
                        uid_ref(p.study_uid), p.called_ae, p.calling_ae)
            return None
        self.completed += 1
        log.info("study#%s complete: job %d for %s from %s (%s), %d series, %d instances%s",
                 uid_ref(p.study_uid), job.id, p.called_ae, p.calling_ae, p.caller_ip, series_count, instances,
                 f", follow-up of job {job.follow_up_of}" if job.follow_up_of else "")
        return job

    def start(self, interval: float = 0.25) -> None:
        self._loop = Periodic("study-completion", interval, self.check, log, "study completion check failed")
        self._loop.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        with self._lock:
            self._flush_locked()
