"""The API's one window onto the node: every read and change of jobs, job files, buckets,
the archive and the routing file goes through :class:`NodeStore`.

Nothing else in :mod:`magickbox.api` imports the node's internals (``db``, ``jobfiles``,
``buckets``, ``store``, ``series``, ``dicomio``): when they are restructured, this module
is the only one to follow.  The API works with the plain records defined here
(:class:`JobRecord`, :class:`BucketRecord`).

Reads use their own read-only SQLite connections (one per thread), so a long filtered
listing never holds the node's database lock that the DICOM receiver and the dispatcher
write under.  Changes go through the node's :class:`~magickbox.db.Database` and the job
directory protocol (:class:`~magickbox.jobfiles.JobDir`): a cancel is the ``cancel`` file
the worker watches, a re-run and an upload are new ``queued`` job records the dispatcher
submits like any other.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..jobfiles import regular_files
from ..layout import DataLayout

__all__ = ["NodeStore", "JobRecord", "BucketRecord", "JobQuery", "StoreConflict", "InstanceRejected",
           "JOB_STATUSES", "FINAL_STATUSES", "ACTIVE_STATUSES"]

from ..model import ACTIVE_STATUSES, FINAL_STATUSES, JOB_STATUSES, JobStatus  # noqa: E402

_LIST_COLUMNS = ("id", "bucket_ae", "calling_ae", "caller_ip", "source", "received", "completed", "series_count",
                 "instance_count", "follow_up_of", "status", "created", "started", "finished", "worker", "exit_code",
                 "log_size", "message", "attempts", "bucket_version", "committed", "input_scope")
#: what a search pattern is matched against: one line per job, in this order (never the
#: study UID; dates have their own filters)
SEARCHED_FIELDS = ("#id", "bucket_ae", "calling_ae", "caller_ip", "status", "source", "worker", "message")
_SEARCH_TEXT = ("printf('#%d %s %s %s %s %s %s %s', id, bucket_ae, calling_ae, caller_ip, status, source, worker,"
                " replace(message, char(10), ' '))")     # printf: a third faster than || here
_SEARCH_BUDGET = 10.0       # seconds a listing may search before it gives up
_BLOCK = 4096               # job ids per search block
_CACHE_CHARS = 64 << 20     # search lines of finished jobs kept in memory (about 800,000 jobs)


class StoreConflict(Exception):
    """The change is not possible in the job's current state (HTTP 409)."""


class InstanceRejected(ValueError):
    """An uploaded file is not an archivable DICOM instance; the message says why."""


@dataclass(frozen=True)
class JobRecord:
    """One job as the API shows it.  ``study_uid`` and ``classification`` (keyed by
    series UID) are for admins' job pages only."""

    id: int
    bucket_ae: str
    calling_ae: str
    caller_ip: str
    source: str
    status: str
    message: str
    received: float
    completed: float | None
    created: float | None
    started: float | None
    finished: float | None
    committed: float | None
    worker: str | None
    exit_code: int | None
    attempts: int
    log_size: int
    series_count: int
    instance_count: int
    follow_up_of: int | None
    bucket_version: str | None
    input_scope: str = "delivered"     # what the job's input holds: "delivered" or "study"
    study_uid: str = field(default="", repr=False)
    classification: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class BucketRecord:
    ae_title: str
    name: str
    description: str
    version: str
    license: str
    enabled: bool
    runner: str


@dataclass
class JobQuery:
    """Filters of the job list; all optional.  ``pattern`` (anything with ``finditer``
    whose matches never span a line break, see :mod:`magickbox.api.search`) is searched
    in one line of text per job: :data:`SEARCHED_FIELDS`."""

    statuses: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    since: float | None = None          # received >= since (epoch seconds)
    until: float | None = None          # received < until
    pattern: Any = None
    before: int | None = None           # job id < before (keyset pagination, newest first)
    limit: int = 100


@dataclass(frozen=True)
class FileEntry:
    """A regular file of a job (symbolic links and special files are never served)."""

    arcname: str
    path: Path
    size: int


class NodeStore:
    """Jobs, job files, buckets, archive and routing file of one node."""

    def __init__(self, *, layout: DataLayout, node_name: str, db: Any, registry: Any, archive: Any, series: Any,
                 header_reader: Any, lenient_uids: bool = False, dicom_ae_title: str = "",
                 dicom_port: int | None = None, http_port: int | None = None,
                 connection_counts: Callable[[], dict[str, int]] | None = None):
        self.layout = layout
        self.data_dir = layout.root
        self.node_name = node_name
        self.db = db
        self.registry = registry
        self.archive = archive
        self.series = series
        self.header_reader = header_reader
        self.lenient_uids = lenient_uids
        self.dicom_ae_title = dicom_ae_title
        self.dicom_port = dicom_port
        self.http_port = http_port
        self._connection_counts = connection_counts
        self.db_path = Path(db.path)
        self.routing_path = layout.routing_rules
        self.quarantine_dir = layout.upload_quarantine
        self.started = time.time()
        self._local = threading.local()
        self._cache_lock = threading.Lock()
        self._search_cache: dict[int, tuple[tuple[int, float], str]] = {}
        self._cache_chars = 0

    @classmethod
    def from_node(cls, node: Any) -> "NodeStore":
        """The store of a running :class:`magickbox.node.Node`."""
        return cls(layout=node.layout, node_name=node.config.node_name, db=node.db,
                   registry=node.registry, archive=node.archive, series=node.series,
                   header_reader=node.receiver.reader, lenient_uids=node.config.dicom.uid_grammar == "lenient",
                   dicom_ae_title=node.config.dicom.ae_title, dicom_port=node.dicom_port,
                   connection_counts=getattr(getattr(node.receiver, "guard", None), "counts", None))

    # -- plumbing --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _jobdir(self, job_id: int) -> Any:
        from ..jobfiles import JobDir
        return JobDir.of(self.layout, int(job_id))

    @staticmethod
    def _record(row: sqlite3.Row | dict[str, Any]) -> JobRecord:
        d = dict(row)
        classification = d.get("classification")
        return JobRecord(
            id=d["id"], bucket_ae=d["bucket_ae"], calling_ae=d["calling_ae"], caller_ip=d["caller_ip"],
            source=d["source"], status=d["status"], message=d["message"] or "", received=d["received"],
            completed=d["completed"], created=d["created"], started=d["started"], finished=d["finished"],
            committed=d.get("committed"), worker=d["worker"], exit_code=d["exit_code"], attempts=d["attempts"],
            log_size=d["log_size"], series_count=d["series_count"], instance_count=d["instance_count"],
            follow_up_of=d["follow_up_of"], bucket_version=d["bucket_version"],
            input_scope=d.get("input_scope") or "delivered", study_uid=d.get("study_uid", ""),
            classification=json.loads(classification) if isinstance(classification, str) else {})

    # -- node ------------------------------------------------------------------------------
    def job_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in JOB_STATUSES}
        for status, n in self._conn().execute("SELECT status, count(*) FROM jobs GROUP BY status"):
            counts[status] = n
        return counts

    def queue_by_bucket(self) -> dict[str, dict[str, int]]:
        """{AE title: {"queued": n, "running": n}} for every bucket and every AE title
        with unfinished jobs."""
        queue = {b.ae_title: {s.value: 0 for s in ACTIVE_STATUSES} for b in self.buckets()}
        rows = self._conn().execute("SELECT bucket_ae, status, count(*) FROM jobs WHERE status IN"
                                    f" ('{JobStatus.QUEUED.value}', '{JobStatus.RUNNING.value}') GROUP BY bucket_ae, status")
        for ae, status, n in rows:
            queue.setdefault(ae, {s.value: 0 for s in ACTIVE_STATUSES})[status] = n
        return queue

    def pending_study_count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM pending_studies").fetchone()[0]

    def dicom_connections(self) -> dict[str, int] | None:
        """The receiver's connection counts (pending, associated ...), where it keeps them."""
        return self._connection_counts() if self._connection_counts is not None else None

    def buckets_error(self) -> str | None:
        return self.registry.last_error

    def disk_free(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    # -- buckets ---------------------------------------------------------------------------
    def buckets(self) -> list[BucketRecord]:
        return [BucketRecord(b.ae_title, b.name, b.description, b.version, b.license, b.enabled, b.run.runner)
                for b in sorted(self.registry.all(), key=lambda b: b.ae_title.lower())]

    def bucket(self, ae_title: str) -> BucketRecord | None:
        return next((b for b in self.buckets() if b.ae_title == ae_title.strip()), None)

    # -- jobs: reading -------------------------------------------------------------------------
    def list_jobs(self, query: JobQuery) -> tuple[list[JobRecord], int | None]:
        """(a page of jobs, newest first; the ``before`` of the next page or None)."""
        where, args = [], []
        if query.statuses:
            where.append(f"status IN ({','.join('?' * len(query.statuses))})")
            args += list(query.statuses)
        if query.buckets:
            where.append(f"bucket_ae IN ({','.join('?' * len(query.buckets))})")
            args += list(query.buckets)
        if query.senders:
            where.append(f"calling_ae IN ({','.join('?' * len(query.senders))})")
            args += list(query.senders)
        if query.since is not None:
            where.append("received >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("received < ?")
            args.append(query.until)
        if query.before is not None:
            where.append("id < ?")
            args.append(query.before)
        conn = self._conn()
        if query.pattern is not None:
            ids = self._search(conn, where, args, query)
            where, args = [f"id IN ({','.join('?' * len(ids))})"], list(ids)
        sql = (f"SELECT {', '.join(_LIST_COLUMNS)} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        rows = conn.execute(sql, (*args, query.limit + 1)).fetchall()
        records = [self._record(r) for r in rows[:query.limit]]
        return records, (records[-1].id if len(rows) > query.limit else None)

    def _search(self, conn: sqlite3.Connection, where: list[str], args: list[Any], query: JobQuery) -> list[int]:
        """Ids (newest first, at most limit + 1) of the jobs passing ``where`` whose search
        line matches ``query.pattern``.

        Ids are searched in blocks of :data:`_BLOCK`, newest first, until enough matched.
        A block's lines are one text (SQLite's ``group_concat``) that the pattern scans in
        one call; the text of a block whose jobs are all finished is kept in memory (such
        jobs never change; a removed one changes the block's count and id sum, which every
        use checks).  The other filters are then applied in SQL to the block's matches."""
        assert query.pattern is not None
        low_id, high_id = conn.execute("SELECT min(id), max(id) FROM jobs").fetchone()
        if low_id is None:
            return []
        top = min(high_id + 1, query.before) if query.before is not None else high_id + 1
        found: list[int] = []
        deadline = time.monotonic() + _SEARCH_BUDGET
        block = (top - 1) // _BLOCK
        while block >= low_id // _BLOCK and len(found) <= query.limit:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the search took longer than {_SEARCH_BUDGET:g} s; narrow it with filters")
            ceiling = min((block + 1) * _BLOCK, top)
            matches = [i for i in self._matches(self._block_text(conn, block), query.pattern) if i < ceiling]
            if matches and where:
                marks = ",".join("?" * len(matches))
                allowed = {r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks}) AND "
                                                      + " AND ".join(where), (*matches, *args))}
                matches = [i for i in matches if i in allowed]
            found += matches[:query.limit + 1 - len(found)]
            block -= 1
        return found

    def warm_search_cache(self) -> None:
        """Build the search text of every block of finished jobs (at start-up, in the
        background, so the first search is as fast as the next)."""
        conn = self._conn()
        low_id, high_id = conn.execute("SELECT min(id), max(id) FROM jobs").fetchone()
        if low_id is None:
            return
        for block in range(high_id // _BLOCK, low_id // _BLOCK - 1, -1):
            self._block_text(conn, block)
            if self._cache_chars >= _CACHE_CHARS:
                return

    @staticmethod
    def _matches(text: str | None, pattern: Any) -> list[int]:
        """Ids of the lines of ``text`` (``#id ...`` per line) that ``pattern`` matches."""
        ids: list[int] = []
        if not text:
            return ids
        last_line = -1
        for match in pattern.finditer(text):
            line = text.rfind("\n", 0, match.start()) + 1
            if line != last_line:
                last_line = line
                ids.append(int(text[line + 1:text.index(" ", line)]))
        return ids

    def _block_text(self, conn: sqlite3.Connection, block: int) -> str | None:
        """The search lines of the jobs with ids in ``block``, newest first."""
        low, high = block * _BLOCK, (block + 1) * _BLOCK
        count, total = conn.execute("SELECT count(*), total(id) FROM jobs WHERE id >= ? AND id < ?",
                                    (low, high)).fetchone()
        with self._cache_lock:
            cached = self._search_cache.get(block)
        if cached is not None and cached[0] == (count, total):
            return cached[1]
        text = conn.execute(f"SELECT group_concat(line, char(10)) FROM (SELECT {_SEARCH_TEXT} AS line FROM jobs"
                            " WHERE id >= ? AND id < ? ORDER BY id DESC)", (low, high)).fetchone()[0]
        unfinished = conn.execute("SELECT count(*) FROM jobs WHERE id >= ? AND id < ? AND status IN"
                                  f" ('{JobStatus.QUEUED.value}', '{JobStatus.RUNNING.value}')", (low, high)).fetchone()[0]
        if not unfinished and text:
            with self._cache_lock:
                previous = self._search_cache.pop(block, None)
                self._cache_chars -= len(previous[1]) if previous else 0
                if self._cache_chars + len(text) <= _CACHE_CHARS:
                    self._search_cache[block] = ((count, total), text)
                    self._cache_chars += len(text)
        return text

    def job(self, job_id: int) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._record(row) if row else None

    def job_info(self, job: JobRecord) -> dict[str, Any]:
        """MagickBox's ``info.json`` of the job: the job directory's copy (it names the
        bucket version that ran), or what the node would write."""
        try:
            info = json.loads((self._jobdir(job.id).info_path).read_text())
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        return {"AETitleCalled": job.bucket_ae, "AETitleCaller": job.calling_ae, "CallerIP": job.caller_ip,
                "received": time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(job.received)),
                "receivedEpoch": job.received, "StudyInstanceUID": job.study_uid, "job": job.id,
                "series": job.series_count, "instances": job.instance_count, "ClassifyTypes": job.classification,
                "followUpOf": job.follow_up_of, "source": job.source}

    def measures(self, job_id: int) -> tuple[list[dict[str, Any]], str | None]:
        """The job's measures and why its measures.json was refused (:mod:`..results.measure_stage`)."""
        from ..results.measure_stage import job_measures
        return job_measures(self._conn(), job_id)

    def routing(self, job_id: int) -> list[dict[str, Any]]:
        """What routing did for the job, one entry per destination (:mod:`..results.outflow`)."""
        from ..results.outflow import routing_records
        return routing_records(self.db, job_id)

    def log_path(self, job_id: int) -> Path | None:
        """The job's ``processing.log``: the committed result's, else the running
        attempt's, else the latest attempt's (a dead attempt's log explains a retry)."""
        jobdir = self._jobdir(job_id)
        committed = jobdir.result / "processing.log"
        if committed.is_file():
            return committed
        claim = jobdir.active_claim()
        if claim is not None and "/" not in claim.attempt:
            live = jobdir.attempts / claim.attempt / "processing.log"
            if live.is_file():
                return live
        try:
            attempts = sorted((d for d in jobdir.attempts.iterdir() if (d / "processing.log").is_file()),
                              key=lambda d: d.name)
        except OSError:
            return None
        return attempts[-1] / "processing.log" if attempts else None

    def _files_under(self, root: Path, prefix: str) -> Iterator[FileEntry]:
        """Regular files under ``root`` (no symlinks followed or served), sorted."""
        for path, size in regular_files(root):
            yield FileEntry(str(Path(prefix) / path.relative_to(root)), path, size)

    def output_files(self, job_id: int) -> list[FileEntry]:
        """The committed result: ``output/**`` and ``processing.log``."""
        result = self._jobdir(job_id).result
        files = list(self._files_under(result / "output", "output"))
        log = result / "processing.log"
        if log.is_file() and not log.is_symlink():
            files.append(FileEntry("processing.log", log, log.stat().st_size))
        return files

    def input_files(self, job_id: int) -> list[FileEntry]:
        """The job's frozen input snapshot (``input/<Series>/<SOP>.dcm``)."""
        return list(self._files_under(self._jobdir(job_id).input, "input"))

    def cancel_requested(self, job_id: int) -> bool:
        return self._jobdir(job_id).cancel_requested()

    # -- jobs: changing ---------------------------------------------------------------------
    def cancel(self, job_id: int) -> JobRecord:
        job = self._existing(job_id)
        if job.is_final:
            raise StoreConflict(f"job {job_id} is already {job.status}")
        jobdir = self._jobdir(job_id)
        jobdir.path.mkdir(parents=True, exist_ok=True)
        jobdir.request_cancel()
        return job

    def rerun(self, job_id: int) -> JobRecord:
        """A new queued job over the same archived study, bucket and sender."""
        job = self._existing(job_id)
        if not job.is_final:
            raise StoreConflict(f"job {job_id} is still {job.status}; cancel it first or wait")
        series_count, instances = self.archive.study_counts(job.study_uid)
        if instances == 0:
            raise StoreConflict(f"the study of job {job_id} is no longer archived; push it again")
        new = self.db.create_job(job.bucket_ae, job.calling_ae, job.caller_ip, job.study_uid, "rerun", job.received,
                                 series_count, instances, job.classification, follow_up_of=job.id)
        return self._existing(new.id)

    def _existing(self, job_id: int) -> JobRecord:
        job = self.job(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _discard_dir(self, path: Path) -> None:
        """Remove a directory: renamed aside first (atomic), then deleted."""
        if not path.exists():
            return
        aside = path.with_name(f".deleted-{path.name}-{uuid.uuid4().hex[:8]}")
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def delete(self, job_id: int, with_study: bool = False) -> dict[str, Any]:
        """Remove a finished job's record and directory, and with ``with_study`` its
        archived study and series records (refused while other jobs or a study being
        received still use the study)."""
        job = self._existing(job_id)
        if not job.is_final:
            raise StoreConflict(f"job {job_id} is still {job.status}; cancel it first")
        removed_study = False
        if with_study:
            others = [r[0] for r in self._conn().execute("SELECT id FROM jobs WHERE study_uid = ? AND id != ?"
                                                         " ORDER BY id", (job.study_uid, job_id))]
            if others:
                raise StoreConflict(f"the study of job {job_id} is also the input of job(s) "
                                    f"{', '.join(map(str, others[:20]))}; remove those first or keep the study")
            receiving = self._conn().execute("SELECT count(*) FROM pending_studies WHERE study_uid = ?",
                                             (job.study_uid,)).fetchone()[0]
            if receiving:
                raise StoreConflict(f"the study of job {job_id} is being received right now")
        tables = {r[0] for r in self._conn().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "route_sends" in tables and self._conn().execute(
                "SELECT count(*) FROM route_sends WHERE job_id = ? AND state IN ('pending', 'sending')",
                (job_id,)).fetchone()[0]:
            raise StoreConflict(f"the results of job {job_id} are still being routed; wait, or remove it later")
        self._discard_dir(self._jobdir(job_id).path)
        # the job's rows of the result stages go with it (measures carbon has not confirmed
        # yet stay and are still delivered: a measure is never lost)
        statements: list[tuple[str, tuple[Any, ...]]] = [
            ("DELETE FROM job_submissions WHERE job_id = ?", (job_id,)),
            ("DELETE FROM jobs WHERE id = ?", (job_id,))]
        if "route_sends" in tables:
            statements += [
                ("DELETE FROM route_acks WHERE send_id IN (SELECT id FROM route_sends WHERE job_id = ?)", (job_id,)),
                ("DELETE FROM route_sends WHERE job_id = ?", (job_id,)),
                ("DELETE FROM route_plans WHERE job_id = ?", (job_id,))]
        if "measure_points" in tables:
            statements.append(("DELETE FROM measure_points WHERE job_id = ? AND delivered IS NOT NULL", (job_id,)))
        self.db.transaction(statements)
        if with_study and job.study_uid:
            self._discard_dir(self.archive.root / job.study_uid)
            self._discard_dir(self.series.root / job.study_uid)
            removed_study = True
        return {"removed": job_id, "study_removed": removed_study}

    # -- uploads ---------------------------------------------------------------------------
    def upload_dir(self) -> Path:
        """Where request bodies are spooled (inside the data dir, same filesystem)."""
        path = self.layout.tmp
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_stale_uploads(self) -> int:
        """At start-up: request bodies of uploads that never got an answer (the node
        stopped while receiving or unpacking them; the client saw no success)."""
        removed = 0
        for path in self.upload_dir().glob("upload-*.zip"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def archive_instance(self, sop_class: str, sop_instance: str, transfer_syntax: str, body: BinaryIO,
                         limit: int) -> str:
        """Archive one uploaded DICOM instance (its data set read from ``body``, after the
        File Meta Information) exactly as the receiver archives a C-STORE; returns the
        Study Instance UID.  :class:`InstanceRejected` says what is wrong with it."""
        from ..dicomio import HeaderError
        from ..store import StoreOutcome, file_meta
        from ..uids import UIDError, check_uid
        spool = self.archive.new_spool()
        try:
            size = 0
            while True:
                chunk = body.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise InstanceRejected(f"larger than the upload limit of {limit} bytes")
                spool.write(chunk)
            try:
                header = self.header_reader.read(spool, transfer_syntax)
            except HeaderError as exc:
                raise InstanceRejected(str(exc)) from None
            try:
                sop_class = check_uid(sop_class, "Media Storage SOP Class UID", self.lenient_uids)
                sop = check_uid(str(header.get("SOPInstanceUID", "") or ""), "SOP Instance UID", self.lenient_uids)
                study = check_uid(str(header.get("StudyInstanceUID", "") or ""), "Study Instance UID",
                                  self.lenient_uids)
                series = check_uid(str(header.get("SeriesInstanceUID", "") or ""), "Series Instance UID",
                                   self.lenient_uids)
                check_uid(transfer_syntax, "Transfer Syntax UID", self.lenient_uids)
            except UIDError as exc:
                raise InstanceRejected(str(exc)) from None
            if sop != sop_instance.rstrip("\x00 "):
                raise InstanceRejected("the data set's SOP Instance UID differs from the File Meta Information's")
            stored = self.archive.store(study, series, sop, file_meta(sop_class, sop, transfer_syntax), spool)
            self.series.update(study, series, header, stored.outcome is StoreOutcome.NEW)
            return study
        finally:
            spool.discard()

    def create_upload_jobs(self, bucket_ae: str, sender: str, caller_ip: str, studies: list[str]) -> list[JobRecord]:
        """One queued job per uploaded study (over the whole archived study, like a
        follow-up job when the same sender sent it to the same bucket before)."""
        jobs = []
        for study in studies:
            self.series.flush(study)
            classification = self.series.study_classification(study)
            series_count, instances = self.archive.study_counts(study)
            previous = [j.id for j in self.db.jobs_for_study(study, bucket_ae) if j.calling_ae == sender]
            new = self.db.create_job(bucket_ae, sender, caller_ip, study, "upload", time.time(), series_count,
                                     instances, classification, follow_up_of=max(previous) if previous else None)
            jobs.append(self._existing(new.id))
        return jobs

    def quarantine_upload(self, spooled: Path, why: str) -> Path:
        """Keep a rejected upload (never deleted) with a note saying why."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now / 1e9))
        target = self.quarantine_dir / f"{stamp}.{now % 10**9:09d}-{uuid.uuid4().hex[:6]}.zip"
        os.replace(spooled, target)
        target.with_suffix(".txt").write_text(why + "\n")
        return target

    # -- routing rules -----------------------------------------------------------------------
    def routing_text(self) -> str | None:
        try:
            return self.routing_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def replace_routing(self, text: str) -> None:
        """Atomically replace routing.json (the caller validated ``text``); the previous
        version is kept as ``routing.json.<time>.bak``."""
        if not self.routing_path.exists():
            raise StoreConflict("there is no routing.json in the node's data directory to replace")
        backup = self.routing_path.with_name(f"routing.json.{time.strftime('%Y%m%dT%H%M%S')}.bak")
        shutil.copy2(self.routing_path, backup)
        tmp = self.routing_path.with_name(f".routing.json.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.routing_path)
