"""The node's embedded SQLite store: pending studies and job records.

``<data>/magickbox.sqlite`` (WAL, ``synchronous=FULL``).  The job table is the truth
about every processing run: status moves ``queued → running → success | failed |
partial | timeout | cancelled`` with times, worker, exit code and log size.

A job's input is either what its association set (called AE, calling AE, study)
delivered — ``input_scope = 'delivered'``, the instances listed in ``job_instances`` —
or the whole archived study (``'study'``: backfill, a bucket that asks for it and a
caller allowed to see it, and jobs created before HOPS recorded deliveries).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .model import JobStatus

__all__ = ["Database", "Job", "PendingStudy"]

_QUEUED, _RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS pending_studies (
    key TEXT PRIMARY KEY,
    called_ae TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    caller_ip TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    open_associations INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0,
    manifest TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket_ae TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    caller_ip TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'dicom',
    received REAL NOT NULL,
    completed REAL NOT NULL,
    series_count INTEGER NOT NULL,
    instance_count INTEGER NOT NULL,
    classification TEXT NOT NULL DEFAULT '{{}}',
    follow_up_of INTEGER,
    status TEXT NOT NULL DEFAULT '{_QUEUED}',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    worker TEXT,
    exit_code INTEGER,
    log_size INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    bucket_version TEXT,
    committed REAL,
    input_scope TEXT NOT NULL DEFAULT 'study'
);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid, bucket_ae);
CREATE TABLE IF NOT EXISTS job_instances (
    job_id INTEGER NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, series_uid, sop_uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_submissions (
    job_id INTEGER PRIMARY KEY,
    submitted REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


@dataclass(frozen=True)
class PendingStudy:
    key: str
    called_ae: str
    calling_ae: str
    caller_ip: str
    study_uid: str
    first_received: float
    last_received: float
    open_associations: int
    instances: int
    manifest: str | None = None


@dataclass(frozen=True)
class Job:
    id: int
    bucket_ae: str
    calling_ae: str
    caller_ip: str
    study_uid: str
    source: str
    received: float
    completed: float
    series_count: int
    instance_count: int
    classification: dict[str, list[str]]
    follow_up_of: int | None
    status: str
    created: float
    started: float | None
    finished: float | None
    worker: str | None
    exit_code: int | None
    log_size: int
    message: str
    attempts: int
    bucket_version: str | None
    committed: float | None = None
    input_scope: str = "study"

    def info_json(self) -> dict[str, Any]:
        """What MagickBox's ``info.json`` carried for a job, plus the HOPS counts."""
        return {
            "AETitleCalled": self.bucket_ae,
            "AETitleCaller": self.calling_ae,
            "CallerIP": self.caller_ip,
            "received": time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(self.received)),
            "receivedEpoch": self.received,
            "StudyInstanceUID": self.study_uid,
            "job": self.id,
            "series": self.series_count,
            "instances": self.instance_count,
            "ClassifyTypes": self.classification,
            "followUpOf": self.follow_up_of,
            "source": self.source,
            "input": self.input_scope,
        }

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return d


def study_key(called_ae: str, calling_ae: str, study_uid: str) -> str:
    return f"{called_ae}\x1f{calling_ae}\x1f{study_uid}"


@dataclass(frozen=True)
class StatementResult:
    """What one statement of a transaction changed (read before COMMIT, which resets a
    cursor's ``rowcount``)."""

    rowcount: int
    lastrowid: int | None


#: columns added after the first release: (table, column, declaration)
_MIGRATIONS = (
    ("pending_studies", "manifest", "TEXT"),
    ("jobs", "input_scope", "TEXT NOT NULL DEFAULT 'study'"),
)


class Database:
    """Thread-safe access to the node's SQLite file (one connection, one lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        for table, column, declaration in _MIGRATIONS:
            columns = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _tx(self, statements: Iterable[tuple[str, tuple[Any, ...]]], first_must_change: bool = False
            ) -> list[StatementResult]:
        """Run the statements in one transaction; what each changed, in order.
        ``first_must_change``: if the first statement changes no row, roll back and
        return an empty list."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                results = []
                for sql, args in statements:
                    cur.execute(sql, args)
                    results.append(StatementResult(cur.rowcount, cur.lastrowid))
                    if first_must_change and len(results) == 1 and cur.rowcount == 0:
                        cur.execute("ROLLBACK")
                        return []
                cur.execute("COMMIT")
                return results
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def transaction(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> list[StatementResult]:
        """Run statements in one transaction (for stages that keep their own tables)."""
        return self._tx(statements)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, args)

    # -- pending studies -------------------------------------------------------------
    def upsert_pending(self, key: str, called: str, calling: str, ip: str, study: str, now: float,
                       new_association: bool, manifest: str | None = None) -> str | None:
        """Durably record that a study is being received (before the first instance of
        it in an association is acknowledged).  ``manifest`` names the delivery list of a
        new pending study; returns the pending study's manifest (an existing one wins)."""
        self._tx([(
            "INSERT INTO pending_studies (key, called_ae, calling_ae, caller_ip, study_uid, first_received,"
            " last_received, open_associations, instances, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
            " ON CONFLICT(key) DO UPDATE SET last_received = excluded.last_received,"
            " open_associations = open_associations + ?",
            (key, called, calling, ip, study, now, now, 1 if new_association else 0, manifest,
             1 if new_association else 0))])
        row = self.execute("SELECT manifest FROM pending_studies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def touch_pending(self, updates: dict[str, tuple[float, int]]) -> None:
        """Batch update of last_received and the instance count."""
        if updates:
            self._tx([("UPDATE pending_studies SET last_received = max(last_received, ?), instances = instances + ?"
                       " WHERE key = ?", (t, n, k)) for k, (t, n) in updates.items()])

    def association_ended(self, keys: Iterable[str], now: float) -> None:
        self._tx([("UPDATE pending_studies SET open_associations = max(open_associations - 1, 0),"
                   " last_received = max(last_received, ?) WHERE key = ?", (now, k)) for k in keys])

    def reset_open_associations(self) -> int:
        """At start-up: associations of a previous process are gone."""
        return self._tx([("UPDATE pending_studies SET open_associations = 0", ())])[0].rowcount

    def pending(self) -> list[PendingStudy]:
        rows = self.execute("SELECT * FROM pending_studies ORDER BY first_received").fetchall()
        return [PendingStudy(**dict(r)) for r in rows]

    def previous_job(self, bucket_ae: str, calling_ae: str, study_uid: str) -> Job | None:
        """The latest job of this bucket, caller and study."""
        row = self.execute("SELECT * FROM jobs WHERE bucket_ae = ? AND calling_ae = ? AND study_uid = ?"
                           " ORDER BY id DESC LIMIT 1", (bucket_ae, calling_ae, study_uid)).fetchone()
        return self._job(row) if row else None

    def complete_study(self, pending: PendingStudy, now: float, series_count: int, instance_count: int,
                       classification: dict[str, list[str]],
                       instances: Iterable[tuple[str, str]] | None = None) -> Job | None:
        """Turn a pending study into a job (or drop it when nothing was archived), in one
        transaction.  ``instances`` ((series UID, SOP Instance UID) pairs): the job's input
        is exactly these (``input_scope = 'delivered'``); None: the whole study.  A study
        already processed for the same caller and bucket becomes a follow-up job
        (``follow_up_of``)."""
        # only the pending row as read: a receiving process may have opened an association
        # or recorded an instance of the study since (then it is not complete yet)
        unchanged = ("DELETE FROM pending_studies WHERE key = ? AND open_associations = 0 AND last_received = ?",
                     (pending.key, pending.last_received))
        with self._lock:
            previous = self.previous_job(pending.called_ae, pending.calling_ae, pending.study_uid)
            if instance_count == 0:
                self._tx([unchanged], first_must_change=True)
                return None
            scope = "study" if instances is None else "delivered"
            with_id = "(SELECT max(id) FROM jobs)"      # the job inserted first in this transaction
            statements = [
                unchanged,
                ("INSERT INTO jobs (bucket_ae, calling_ae, caller_ip, study_uid, source, received, completed,"
                 " series_count, instance_count, classification, follow_up_of, status, created, input_scope)"
                 f" VALUES (?, ?, ?, ?, 'dicom', ?, ?, ?, ?, ?, ?, '{_QUEUED}', ?, ?)",
                 (pending.called_ae, pending.calling_ae, pending.caller_ip, pending.study_uid,
                  pending.first_received, now, series_count, instance_count, json.dumps(classification),
                  previous.id if previous else None, now, scope)),
            ]
            statements += [(f"INSERT OR IGNORE INTO job_instances (job_id, series_uid, sop_uid)"
                            f" VALUES ({with_id}, ?, ?)", (series, sop)) for series, sop in (instances or ())]
            results = self._tx(statements, first_must_change=True)
            return self.job(results[1].lastrowid) if results else None  # type: ignore[arg-type]

    def job_instances(self, job_id: int) -> list[tuple[str, str]]:
        """(series UID, SOP Instance UID) of a 'delivered' job's input."""
        return [(r[0], r[1]) for r in self.execute(
            "SELECT series_uid, sop_uid FROM job_instances WHERE job_id = ? ORDER BY series_uid, sop_uid",
            (job_id,)).fetchall()]

    def drop_pending(self, key: str) -> None:
        self._tx([("DELETE FROM pending_studies WHERE key = ?", (key,))])

    # -- jobs ------------------------------------------------------------------------
    @staticmethod
    def _job(row: sqlite3.Row | dict[str, Any]) -> Job:
        """A job record from a row (columns a record does not have, such as those of
        databases written by older versions, are ignored)."""
        d = {k: v for k, v in dict(row).items() if k in Job.__dataclass_fields__}
        d["classification"] = json.loads(d["classification"] or "{}")
        return Job(**d)

    def job(self, job_id: int) -> Job | None:
        row = self.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def jobs(self, status: str | None = None, limit: int = 1000) -> list[Job]:
        if status:
            rows = self.execute("SELECT * FROM jobs WHERE status = ? ORDER BY id DESC LIMIT ?", (status, limit))
        else:
            rows = self.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [self._job(r) for r in rows.fetchall()]

    def count_jobs(self, status: str) -> int:
        return self.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    # -- the job lifecycle (queue) ------------------------------------------------------
    def unfinished(self) -> list[tuple[Job, float | None, int]]:
        """(job, last submission time or None, submissions) of queued and running jobs."""
        rows = self.execute(
            "SELECT jobs.*, s.submitted AS _submitted, s.count AS _count FROM jobs"
            " LEFT JOIN job_submissions s ON s.job_id = jobs.id"
            f" WHERE status IN ('{_QUEUED}', '{_RUNNING}') ORDER BY jobs.id").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            submitted, count = d.pop("_submitted"), d.pop("_count")
            out.append((self._job(d), submitted, count or 0))
        return out

    def mark_submitted(self, job_id: int, now: float, bucket_version: str | None) -> None:
        self._tx([
            ("INSERT INTO job_submissions (job_id, submitted, count) VALUES (?, ?, 1) ON CONFLICT(job_id)"
             " DO UPDATE SET submitted = excluded.submitted, count = count + 1", (job_id, now)),
            ("UPDATE jobs SET bucket_version = coalesce(bucket_version, ?) WHERE id = ?", (bucket_version, job_id)),
        ])

    def last_submission(self, job_id: int) -> float | None:
        row = self.execute("SELECT submitted FROM job_submissions WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def forget_submissions(self) -> None:
        """At start-up: whatever was submitted to an embedded queue is gone."""
        self._tx([("DELETE FROM job_submissions", ())])

    def mark_running(self, job_id: int, worker: str, started: float) -> bool:
        """A (new) attempt is running; counts attempts once per (worker, start time)."""
        cur = self._tx([(f"UPDATE jobs SET status = '{_RUNNING}', worker = ?, started = ?, attempts = attempts + 1"
                         f" WHERE id = ? AND status IN ('{_QUEUED}', '{_RUNNING}')"
                         " AND NOT (coalesce(worker, '') = ? AND coalesce(started, 0) = ?)",
                         (worker, started, job_id, worker, started))])[0]
        return cur.rowcount == 1

    def commit_result(self, job_id: int, status: str, message: str, exit_code: int | None, started: float | None,
                      finished: float | None, worker: str | None, log_size: int, attempts: int | None = None) -> bool:
        """Record a job's final status; True only the first time (exactly-once)."""
        cur = self._tx([("UPDATE jobs SET status = ?, message = ?, exit_code = ?, started = coalesce(?, started),"
                         " finished = ?, worker = coalesce(?, worker), log_size = ?,"
                         " attempts = coalesce(?, attempts), committed = ?"
                         f" WHERE id = ? AND status IN ('{_QUEUED}', '{_RUNNING}')",
                         (status, message, exit_code, started, finished, worker, log_size, attempts, time.time(),
                          job_id))])[0]
        return cur.rowcount == 1

    def create_job(self, bucket_ae: str, calling_ae: str, caller_ip: str, study_uid: str, source: str,
                   received: float, series_count: int, instance_count: int,
                   classification: dict[str, list[str]], follow_up_of: int | None = None,
                   bucket_version: str | None = None) -> Job:
        now = time.time()
        cur = self._tx([(
            "INSERT INTO jobs (bucket_ae, calling_ae, caller_ip, study_uid, source, received, completed,"
            " series_count, instance_count, classification, follow_up_of, status, created, bucket_version)"
            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{_QUEUED}', ?, ?)",
            (bucket_ae, calling_ae, caller_ip, study_uid, source, received, now, series_count, instance_count,
             json.dumps(classification), follow_up_of, now, bucket_version))])[0]
        return self.job(int(cur.lastrowid or 0))  # type: ignore[return-value]

    def jobs_for_study(self, study_uid: str, bucket_ae: str) -> list[Job]:
        rows = self.execute("SELECT * FROM jobs WHERE study_uid = ? AND bucket_ae = ? ORDER BY id",
                            (study_uid, bucket_ae)).fetchall()
        return [self._job(r) for r in rows]
