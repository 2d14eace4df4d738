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
which completes into a **follow-up job** (``follow_up_of`` points at the previous job of
the same bucket, caller and study) over everything that bucket got from that caller for
the study.

**What a job gets.**  Each pending study has a *delivery list*,
``<data>/deliveries/<token>.lst``: a ``?<Series>/<SOP>`` line before an instance is
archived and a ``<Series>/<SOP>`` line once it is (before it is acknowledged), so the list
survives a killed node (page cache; fdatasync'd every ``flush_seconds``, when an
association ends and before completion).  An instance with only the first line (the node
died in between) counts if the archived file is the one this caller wrote (its File Meta
names it as the source); a refused one never counts.  A job's input is exactly that
list (plus the previous jobs' lists for a follow-up), not the whole archived study: an
AE title that sends one instance under another scanner's StudyInstanceUID gets that
instance back, nothing else.  A bucket may ask for the whole study (``"run": {"input": "study"}``); it
gets it only for callers the node's configuration trusts with it (``input_scope``
decides, see :mod:`.node`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .db import Database, Job, PendingStudy, study_key
from .periodic import Periodic
from .series import SeriesRecords
from .store import FILE_MODE, DicomArchive, make_private_dir, read_stored_meta

__all__ = ["StudyTracker", "uid_ref"]

log = logging.getLogger("magickbox.studies")


def uid_ref(uid: str) -> str:
    """A short, non-identifying reference to a UID for logs (``study#1a2b3c4d``)."""
    import hashlib
    return hashlib.sha256(uid.encode()).hexdigest()[:8]


class StudyTracker:
    def __init__(self, db: Database, archive: DicomArchive, series: SeriesRecords, quiet_seconds: float,
                 on_job: Callable[[Job], None] | None = None, flush_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time, makes_jobs: Callable[[str], bool] = lambda ae: True,
                 input_scope: Callable[[str, str], str] = lambda called, calling: "delivered"):
        """``makes_jobs(called_ae)``: False for AE titles that only archive (the node's own
        and extra AE titles); their studies complete without a job.
        ``input_scope(called_ae, calling_ae)``: ``"delivered"`` or ``"study"``."""
        self.db = db
        self.archive = archive
        self.series = series
        self.quiet_seconds = quiet_seconds
        self.on_job = on_job
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.makes_jobs = makes_jobs
        self.input_scope = input_scope
        self.deliveries = archive.layout.deliveries
        make_private_dir(self.deliveries)
        self._manifests: dict[str, int] = {}             # pending key -> open delivery list
        self._tokens: dict[str, str] = {}                # pending key -> token of that list
        self._unsynced: set[str] = set()                 # keys with appended, unsynced lines
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
                manifest = self.db.upsert_pending(key, called, calling, ip, study, self.clock(),
                                                  new_association=first_in_assoc, manifest=uuid.uuid4().hex)
                keys.add(key)
                self._known.add(key)
                if manifest and self._tokens.get(key) != manifest:
                    # a new pending row (or, with several receiving processes, another
                    # process completed the one whose list is open here): its own list
                    old = self._manifests.pop(key, None)
                    if old is not None:
                        os.close(old)
                    self._manifests[key] = os.open(self._manifest_path(manifest),
                                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
                    self._tokens[key] = manifest
        return key

    def _manifest_path(self, token: str) -> Path:
        return self.deliveries / f"{token}.lst"

    def _append(self, key: str, line: str) -> None:
        fd = self._manifests.get(key)
        if fd is not None:
            os.write(fd, line.encode("ascii"))
            self._unsynced.add(key)

    def instance_arriving(self, key: str, series: str, sop: str) -> None:
        """Call right before archiving an instance (UIDs already validated: no separators)."""
        with self._lock:
            self._append(key, f"?{series}/{sop}\n")

    def instance_stored(self, key: str, series: str = "", sop: str = "") -> None:
        """Call after an instance was archived (before acknowledging it): counts it and
        adds it to the study's delivery list."""
        now = self.clock()
        with self._lock:
            last, count = self._dirty.get(key, (now, 0))
            self._dirty[key] = (max(last, now), count + 1)
            if sop:
                self._append(key, f"{series}/{sop}\n")

    def association_ended(self, assoc: object) -> None:
        with self._lock:
            keys = self._assoc_keys.pop(assoc, set())
            self._flush_locked()
            carried = set().union(*self._assoc_keys.values()) if self._assoc_keys else set()
            for key in keys - carried:           # synced above; reopened by the next association
                fd = self._manifests.pop(key, None)
                self._tokens.pop(key, None)
                if fd is not None:
                    os.close(fd)
        if keys:
            self.db.association_ended(keys, self.clock())

    def flush(self) -> None:
        """Make what the receive side recorded durable: delivery lists fdatasync'd, the
        times and counts of arriving instances written to the pending rows (the
        completion check does this itself; a receiving process without one calls this
        periodically)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        for key in self._unsynced:
            fd = self._manifests.get(key)
            if fd is not None:
                os.fdatasync(fd)
        self._unsynced.clear()
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
            for p in pending:
                if p.manifest and p.key not in self._manifests:
                    self._manifests[p.key] = os.open(self._manifest_path(p.manifest),
                                                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
                    self._tokens[p.key] = p.manifest
        referenced = {f"{p.manifest}.lst" for p in pending if p.manifest}
        for leftover in self.deliveries.glob("*.lst"):
            if leftover.name not in referenced:          # its job was created; crash before the unlink
                leftover.unlink(missing_ok=True)
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

    def _delivered(self, p: PendingStudy) -> set[tuple[str, str]]:
        """(series, SOP) pairs this pending study's associations delivered (see the
        module docstring) that are archived."""
        try:
            text = self._manifest_path(p.manifest).read_text(encoding="ascii")  # type: ignore[arg-type]
        except FileNotFoundError:
            text = ""
        confirmed: set[tuple[str, str]] = set()
        intended: set[tuple[str, str]] = set()
        for line in text.splitlines():
            target = intended if line.startswith("?") else confirmed
            series, _, sop = line.lstrip("?").partition("/")
            if sop:
                target.add((series, sop))
        pairs = set()
        for series, sop in confirmed | intended:
            path = self.archive.series_dir(p.study_uid, series) / f"{sop}.dcm"
            if (series, sop) not in confirmed:
                try:
                    with open(path, "rb") as fh:
                        if read_stored_meta(fh)[2] != p.calling_ae[:16]:
                            continue          # not written by this caller: never acknowledged to it
                except (OSError, ValueError):
                    continue
            if path.is_file():
                pairs.add((series, sop))
        return pairs

    def _finish_manifest(self, p: PendingStudy) -> None:
        fd = self._manifests.pop(p.key, None)
        self._tokens.pop(p.key, None)
        self._unsynced.discard(p.key)
        if fd is not None:
            os.close(fd)
        if p.manifest:
            self._manifest_path(p.manifest).unlink(missing_ok=True)

    def _still_pending(self, p: PendingStudy) -> bool:
        row = self.db.execute("SELECT manifest FROM pending_studies WHERE key = ?", (p.key,)).fetchone()
        return row is not None and row[0] == p.manifest

    def _complete(self, p: PendingStudy, now: float) -> Job | None:
        if not self.makes_jobs(p.called_ae):
            self.db.drop_pending(p.key)
            self._finish_manifest(p)
            log.info("study#%s received by %s from %s archived (no bucket, no job)", uid_ref(p.study_uid),
                     p.called_ae, p.calling_ae)
            return None
        scope = self.input_scope(p.called_ae, p.calling_ae) if p.manifest else "study"
        classification = self.series.study_classification(p.study_uid)
        if scope == "study":              # (also pending studies recorded before delivery lists existed)
            instances = None
            series_count, count = self.archive.study_counts(p.study_uid)
        else:
            delivered = self._delivered(p)
            previous = self.db.previous_job(p.called_ae, p.calling_ae, p.study_uid)
            if previous is not None and previous.input_scope == "delivered":
                delivered |= {pair for pair in self.db.job_instances(previous.id)
                              if (self.archive.series_dir(p.study_uid, pair[0]) / f"{pair[1]}.dcm").is_file()}
            instances = sorted(delivered)
            series_uids = {series for series, _ in delivered}
            series_count, count = len(series_uids), len(delivered)
            classification = {k: v for k, v in classification.items() if k in series_uids}
        job = self.db.complete_study(p, now, series_count, count, classification, instances)
        if job is None and self._still_pending(p):
            return None           # another receiving process took more of it meanwhile: not complete
        self._finish_manifest(p)
        if job is None:
            log.warning("pending study#%s for %s from %s had no archived instance; dropped",
                        uid_ref(p.study_uid), p.called_ae, p.calling_ae)
            return None
        self.completed += 1
        log.info("study#%s complete: job %d for %s from %s (%s), %d series, %d instances%s%s",
                 uid_ref(p.study_uid), job.id, p.called_ae, p.calling_ae, p.caller_ip, series_count, count,
                 ", the whole study" if instances is None else "",
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
