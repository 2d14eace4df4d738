"""The routing stage: durable sends of every finished job's results (routing.json).

run → **route**.  Every job whose final status was committed gets a routing plan exactly
once, and every (job, rule, destination) of the plan is a durable send record; its
attempts are gearman jobs (function ``route``) like bucket runs, and survive a restart.

Tables (in the node's SQLite file, next to the job table)::

    route_plans  job_id, planned, success, note        one row per routed job
    route_sends  id, job_id, rule_index, rule_name, position, directory, destination
                 (host, port, called_ae, calling_ae), stop_after_success, retry_count,
                 retry_backoff, files (JSON, paths relative to the job directory),
                 state, attempts, next_try, last_error, sent, failed, updated
    route_acks   send_id, sop_uid, status, acked        one row per acknowledged file

* **Planning** (crash-safe): each pass looks for jobs in a final status without a row in
  ``route_plans`` (a LEFT JOIN), so a node that died between committing a job and
  planning its routing plans it at the next start.  The plan (rules evaluated with the
  job's called/calling AE title, ``proc.json``'s ``success`` value and its series types,
  ``which`` filters applied, the error report made) is written in one transaction.
  A job that ended without a usable ``proc.json`` (non-zero exit, timeout, no result)
  routes as ``success = "failed"``; cancelled jobs are not routed.  Jobs that were
  already finished when the tables were first created are marked as routed, so an
  upgrade never re-sends history.
* **Sending** goes through the same queue as the buckets: a send is due when its state is
  ``pending``, its ``next_try`` has come and no earlier destination of the same rule with
  ``break: 1`` is still undecided; the node then counts an attempt (``sending``), writes
  the attempt's spec into the job directory and submits a background gearman job to the
  function ``route`` (unique per attempt), which a worker — the node's embedded one or any
  ``magickbox worker`` with the data root — runs (:mod:`.route_worker`): one association,
  every file's C-STORE status checked, each acknowledged file appended and fsynced to
  ``send-<id>.acks`` before the next file goes out, so a resumed send skips what the
  destination already acknowledged (only a file in flight when the node died can arrive
  twice).  The receiver never waits for a send.
* **Reconciling** (every pass): an attempt's outcome file becomes the send's state
  (acknowledged files copied to ``route_acks``); all files acknowledged → ``sent`` (a
  ``break`` destination then marks the rule's later destinations ``skipped``); otherwise
  retried after ``backoff * 2**(attempt-1)`` seconds until ``retry.count`` retries are
  used, then ``failed`` — and the next destination of a fail-over chain becomes due.  An
  attempt whose worker died (stale claim) counts as a failed attempt; one that nobody took
  (the embedded job server forgot it in a restart) is submitted again.
* **Visible**: :func:`routing_records` (API job detail ``routing``, ``magickbox route
  status``), ``jobs/<id>/routing.log`` (the plan with the reasons, every attempt, every
  failed file) and the node log (counts and destinations only, no patient data).
* **Rules**: loaded at start (an invalid file refuses the start, naming rule and key) and
  reloaded when ``routing.json`` changes; an invalid new file is logged with rule and key
  and the previous rules stay active.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

import gear

from ..config import RoutingConfig
from ..db import Database, Job
from ..jobfiles import JobDir, read_proc_json, regular_files
from ..layout import DataLayout
from ..model import FINAL_STATUSES, JobStatus
from ..periodic import Periodic
from .error_report import write_error_report
from .route_worker import ROUTE_FUNCTION, RouteRequest, SendFiles
from .routing import RoutingContext, RoutingError, RoutingTable, load_rules, select_files

__all__ = ["RouteStore", "RouteStage", "routing_records", "job_success_value"]

log = logging.getLogger("magickbox.routing")

PENDING, SENDING, SENT, FAILED, SKIPPED = "pending", "sending", "sent", "failed", "skipped"
_FINAL_SQL = ", ".join(f"'{s.value}'" for s in FINAL_STATUSES)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS route_plans (job_id INTEGER PRIMARY KEY, planned REAL NOT NULL,"
    " success TEXT NOT NULL, note TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS route_sends (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL,"
    " rule_index INTEGER NOT NULL, rule_name TEXT NOT NULL, position INTEGER NOT NULL, directory TEXT NOT NULL,"
    " host TEXT NOT NULL, port INTEGER NOT NULL, called_ae TEXT NOT NULL, calling_ae TEXT NOT NULL,"
    " stop_after_success INTEGER NOT NULL, retry_count INTEGER NOT NULL, retry_backoff REAL NOT NULL,"
    " files TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL,"
    " last_error TEXT NOT NULL DEFAULT '', sent INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,"
    " updated REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS route_sends_due ON route_sends (state, next_try)",
    "CREATE INDEX IF NOT EXISTS route_sends_job ON route_sends (job_id)",
    "CREATE TABLE IF NOT EXISTS route_acks (send_id INTEGER NOT NULL, sop_uid TEXT NOT NULL, status INTEGER,"
    " acked REAL NOT NULL, PRIMARY KEY (send_id, sop_uid)) WITHOUT ROWID",
)


class RouteStore:
    """The routing tables in the node's database (see the module docstring)."""

    def __init__(self, db: Database):
        self.db = db
        existed = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'route_plans'").fetchone()
        for statement in _SCHEMA:
            db.execute(statement)
        if not existed:
            db._tx([("INSERT OR IGNORE INTO route_plans (job_id, planned, success, note) SELECT id, ?, '',"
                     " 'finished before routing was enabled' FROM jobs"
                     f" WHERE status IN ({_FINAL_SQL})", (time.time(),))])

    def unplanned_jobs(self, floor: int = 0, limit: int = 100) -> list[Job]:
        """Jobs with id >= ``floor`` in a final status without a routing plan, oldest first."""
        rows = self.db.execute(
            "SELECT jobs.* FROM jobs LEFT JOIN route_plans p ON p.job_id = jobs.id"
            f" WHERE jobs.id >= ? AND p.job_id IS NULL AND jobs.status IN ({_FINAL_SQL}) ORDER BY jobs.id LIMIT ?",
            (floor, limit)).fetchall()
        return [Database._job(r) for r in rows]

    def job_bounds(self) -> tuple[int | None, int]:
        """(lowest id of a queued or running job or None, highest job id or 0)."""
        active = self.db.execute("SELECT min(id) FROM jobs WHERE status IN (?, ?)",
                                 (JobStatus.QUEUED.value, JobStatus.RUNNING.value)).fetchone()[0]
        return active, self.db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]

    def retry_failed(self, job_id: int) -> int:
        """Make a job's failed sends due again with fresh attempts (``magickbox route retry``)."""
        return self.db._tx([(f"UPDATE route_sends SET state = '{PENDING}', attempts = 0, next_try = ?, updated = ?"
                             f" WHERE job_id = ? AND state = '{FAILED}' AND host != ''",
                             (time.time(), time.time(), job_id))])[0].rowcount

    def record_plan(self, job_id: int, success: str, note: str, sends: list[dict[str, Any]]) -> None:
        """The plan and all its sends, in one transaction."""
        now = time.time()
        statements: list[tuple[str, tuple[Any, ...]]] = [
            ("INSERT INTO route_plans (job_id, planned, success, note) VALUES (?, ?, ?, ?)",
             (job_id, now, success, note))]
        for s in sends:
            statements.append((
                "INSERT INTO route_sends (job_id, rule_index, rule_name, position, directory, host, port, called_ae,"
                " calling_ae, stop_after_success, retry_count, retry_backoff, files, state, next_try, last_error,"
                " updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, s["rule_index"], s["rule_name"], s["position"], s["directory"], s["host"], s["port"],
                 s["called_ae"], s["calling_ae"], int(s["stop_after_success"]), s["retry_count"],
                 s["retry_backoff"], json.dumps(s["files"]), s.get("state", PENDING), now, s.get("last_error", ""),
                 now)))
        self.db._tx(statements)

    def sending(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(f"SELECT * FROM route_sends s WHERE state = '{SENDING}'"
                                                 " AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = s.job_id) ORDER BY id")]

    def unclaim(self, send_id: int, error: str) -> None:
        """A claimed attempt that could not be queued: pending again, the attempt not counted."""
        self.db._tx([(f"UPDATE route_sends SET state = '{PENDING}', attempts = max(attempts - 1, 0), next_try = ?,"
                      f" last_error = ?, updated = ? WHERE id = ? AND state = '{SENDING}'",
                      (time.time() + 5, error, time.time(), send_id))])

    def due(self, now: float, limit: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            f"SELECT s.* FROM route_sends s WHERE s.state = '{PENDING}' AND s.next_try <= ?"
            " AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = s.job_id) AND NOT EXISTS ("
            " SELECT 1 FROM route_sends e WHERE e.job_id = s.job_id AND e.rule_index = s.rule_index"
            f" AND e.position < s.position AND e.stop_after_success = 1 AND e.state IN ('{PENDING}', '{SENDING}'))"
            " ORDER BY s.next_try, s.id LIMIT ?", (now, limit)).fetchall()
        return [dict(r) for r in rows]

    def claim(self, send_id: int) -> bool:
        return self.db._tx([(f"UPDATE route_sends SET state = '{SENDING}', attempts = attempts + 1, updated = ?"
                             f" WHERE id = ? AND state = '{PENDING}'", (time.time(), send_id))])[0].rowcount == 1

    def ack(self, send_id: int, sop_uid: str, status: int) -> None:
        """Record an acknowledged file (the node copies the worker's ``.acks`` here when an
        attempt ends; ``benchmarks/bench_route.py`` times it per file)."""
        self.db._tx([("INSERT OR IGNORE INTO route_acks (send_id, sop_uid, status, acked) VALUES (?, ?, ?, ?)",
                      (send_id, sop_uid, status, time.time()))])

    def record_acks(self, send_id: int, acked: dict[str, int]) -> None:
        now = time.time()
        self.db._tx([("INSERT OR IGNORE INTO route_acks (send_id, sop_uid, status, acked) VALUES (?, ?, ?, ?)",
                      (send_id, uid, status, now)) for uid, status in acked.items()])

    def finish(self, row: dict[str, Any], state: str, next_try: float, error: str, sent: int, failed: int) -> None:
        now = time.time()
        statements: list[tuple[str, tuple[Any, ...]]] = [(
            "UPDATE route_sends SET state = ?, next_try = ?, last_error = ?, sent = ?, failed = ?, updated = ?"
            " WHERE id = ?", (state, next_try, error, sent, failed, now, row["id"]))]
        if state == SENT and row["stop_after_success"]:
            statements.append((
                f"UPDATE route_sends SET state = '{SKIPPED}', updated = ?, last_error = ? WHERE job_id = ?"
                f" AND rule_index = ? AND position > ? AND state = '{PENDING}'",
                (now, f"not needed: {row['called_ae']} received everything ('break')", row["job_id"],
                 row["rule_index"], row["position"])))
        self.db._tx(statements)

    def sends(self, job_id: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM route_sends WHERE job_id = ? ORDER BY rule_index,"
                                                 " position, id", (job_id,)).fetchall()]

    def plan(self, job_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM route_plans WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row else None


def routing_records(db: Database, job_id: int) -> list[dict[str, Any]]:
    """What routing did for a job, one entry per destination (for the API and the CLI).
    Empty when the job was not routed (yet) or the routing tables do not exist."""
    try:
        rows = db.execute("SELECT * FROM route_sends WHERE job_id = ? ORDER BY rule_index, position, id",
                          (job_id,)).fetchall()
    except Exception:  # noqa: BLE001 - a database without the routing tables: nothing routed
        return []
    out = []
    for r in rows:
        out.append({"rule": r["rule_index"], "rule_name": r["rule_name"], "directory": r["directory"],
                    "destination": f"{r['called_ae']}@{r['host']}:{r['port']}" if r["host"] else r["called_ae"],
                    "calling_ae": r["calling_ae"], "state": r["state"], "attempts": r["attempts"],
                    "retries": r["retry_count"], "next_try": r["next_try"] if r["state"] == PENDING else None,
                    "files": len(json.loads(r["files"])), "sent": r["sent"], "failed": r["failed"],
                    "last_error": r["last_error"], "break": bool(r["stop_after_success"]), "updated": r["updated"]})
    return out


def job_success_value(job: Job, jobdir: JobDir) -> str:
    """The ``success`` value routing matches: ``proc.json``'s when the bucket exited 0 and
    wrote one, else ``"failed"`` (non-zero exit, timeout, no result, no proc.json)."""
    outcome = jobdir.committed()
    if outcome is None or outcome.exit_code != 0 or job.status == JobStatus.TIMEOUT:
        return "failed"
    success, _ = read_proc_json(jobdir.result / "output" / "proc.json", jobdir.result / "proc.json")
    return success if success is not None else "failed"


class RouteStage:
    """Plans the sends and queues their attempts on gearman (function ``route``, run by
    :mod:`magickbox.results.route_worker` in a worker); reconciles the attempts' outcomes
    into the send records (see the module docstring).  ``me``: the node's address for
    ``$me``/``$port`` (a callable: the DICOM port is known only once bound)."""

    def __init__(self, layout: DataLayout, db: Database, config: RoutingConfig,
                 me: Callable[[], tuple[str, int]], servers: list[tuple[str, int]] | None = None,
                 interval: float = 0.5, resubmit_after: float = 60.0):
        self.layout = layout
        self.config = config
        self.store = RouteStore(db)
        self.me = me
        self.rules_path = layout.routing_rules
        self._stamp = self._file_stamp()
        self.table: RoutingTable = load_rules(self.rules_path)     # RoutingError refuses the start
        self.servers = servers or []
        self.resubmit_after = resubmit_after
        self.client: gear.Client | None = None
        self._submitted: dict[int, float] = {}      # send id -> when its current attempt was queued
        self._warned = False
        self._floor = 0
        self._stopping = threading.Event()
        self._loop = Periodic("routing", interval, self.run_once, log, "routing pass failed")

    # -- rules ----------------------------------------------------------------------------------
    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.rules_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            table = load_rules(self.rules_path)
        except RoutingError as exc:
            log.error("routing.json changed but is not valid; the previous rules stay active: %s", exc)
            return
        self.table = table
        log.info("routing.json reloaded: %d rule(s)", len(table.rules))

    # -- planning -------------------------------------------------------------------------------
    def _log(self, job_id: int, lines: list[str]) -> None:
        try:
            with open(self.layout.job_dir(job_id) / "routing.log", "a", encoding="utf-8") as fh:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write("".join(f"{stamp} {line}\n" for line in lines))
        except OSError as exc:
            log.warning("job %d: cannot write routing.log: %s", job_id, exc.strerror or exc)

    def plan_job(self, job: Job) -> None:
        jobdir = JobDir.of(self.layout, job.id)
        if job.status == JobStatus.CANCELLED:
            self.store.record_plan(job.id, "", "cancelled: not routed", [])
            return
        success = job_success_value(job, jobdir)
        types = frozenset(t for values in job.classification.values() for t in values)
        ctx = RoutingContext(job.bucket_ae, job.calling_ae, success, types)
        me = self.me()
        plans = self.table.plan(ctx, me, self.config.known_aes)
        explanation = self.table.explain(ctx, me, self.config.known_aes)
        sends: list[dict[str, Any]] = []
        report: Path | None = None
        for plan in plans:
            root = jobdir.input if plan.directory == "INPUT" else jobdir.result / "output"
            files = [path for path, _size in regular_files(root)]     # never through a symlink
            extra: list[Path] = []
            if plan.rule.send_error_report and success.lower() not in ("success", "partial") and plan.sends:
                if report is None:
                    report = self._error_report(job, jobdir, explanation)
                if report is not None:
                    extra.append(report)
            base = {"rule_index": plan.rule.index, "rule_name": plan.rule.name, "directory": plan.directory}
            for position, planned in enumerate(plan.sends):
                chosen = select_files(files, planned.target.which) + extra
                d = planned.destination
                sends.append(dict(base, position=position, host=d.host, port=d.port, called_ae=d.called_ae,
                                  calling_ae=d.calling_ae, stop_after_success=planned.target.stop_after_success,
                                  retry_count=planned.target.retry_count, retry_backoff=planned.target.retry_backoff,
                                  files=[str(p.relative_to(jobdir.path)) for p in chosen]))
            for n, why in enumerate(plan.unresolved):
                sends.append(dict(base, position=1000 + n, host="", port=0, called_ae="?", calling_ae="",
                                  stop_after_success=False, retry_count=0, retry_backoff=0.0, files=[],
                                  state=FAILED, last_error=why))
        note = f"{len(sends)} send(s)" if sends else "no destination fires"
        self.store.record_plan(job.id, success, note, sends)
        self._log(job.id, [f"routing job {job.id} ({job.status}, success={success!r}) with {self.table.source}:",
                           *explanation, f"planned: {note}"])
        log.info("job %d: routing planned, %s (success=%r)", job.id, note, success)

    def _error_report(self, job: Job, jobdir: JobDir, explanation: list[str]) -> Path | None:
        target = jobdir.path / "routing" / "error-report.dcm"
        if target.exists():
            return target
        log_path = jobdir.result / "processing.log"
        if not log_path.exists():
            attempts = sorted(jobdir.attempts.glob("*/processing.log")) if jobdir.attempts.is_dir() else []
            log_path = attempts[-1] if attempts else log_path
        inputs = sorted(jobdir.input.rglob("*.dcm")) if jobdir.input.is_dir() else []
        try:
            return write_error_report(target, job.id, str(job.status), job.message, log_path, inputs)
        except Exception as exc:  # noqa: BLE001 - the job is routed without its report
            explanation.append(f"  error report not made: {exc}")
            log.warning("job %d: no error report: %s", job.id, type(exc).__name__)
            return None

    # -- sending --------------------------------------------------------------------------------
    def run_once(self) -> None:
        """One pass: reload rules, plan finished jobs, reconcile running attempts, queue due sends."""
        self.reload_if_changed()
        # jobs below the floor are all final and planned: each pass looks only above it
        active, highest = self.store.job_bounds()          # before the search, so no job slips by
        jobs = self.store.unplanned_jobs(self._floor, limit=100)
        not_planned: list[int] = []
        for job in jobs:
            if self._stopping.is_set():
                return
            try:
                self.plan_job(job)
            except Exception:
                not_planned.append(job.id)
                log.exception("job %d: routing could not be planned; trying again", job.id)
        if len(jobs) < 100:
            self._floor = max(self._floor, min(x for x in (active, *not_planned, highest + 1) if x is not None))
        self.reconcile()
        for row in self.store.due(time.time(), 100):
            if self._stopping.is_set():
                return
            if self.store.claim(row["id"]):
                row["attempts"] += 1
                if not self._queue(row):
                    return                     # gearman unreachable: the rest wait for the next pass

    def _queue(self, row: dict[str, Any]) -> bool:
        """Write the attempt's spec and submit it to gearman (background, unique per attempt);
        False when gearman could not take it (a fresh claim is given back; an attempt being
        re-queued stays ``sending`` and is queued again at the next pass)."""
        files = SendFiles(self.layout, row["job_id"], row["id"])
        earlier = files.outcome_path(row["attempts"])
        if earlier.exists() and row["id"] not in self._submitted:   # from before a 'route retry'
            earlier.rename(earlier.with_name(f"{earlier.name}.superseded-{time.time():.0f}"))
        files.write_spec({"job": row["job_id"], "send": row["id"], "attempt": row["attempts"],
                          "destination": {"host": row["host"], "port": row["port"], "called_ae": row["called_ae"],
                                          "calling_ae": row["calling_ae"]},
                          "files": json.loads(row["files"]), "timeout": self.config.timeout})
        request = RouteRequest(row["job_id"], row["id"], row["attempts"])
        try:
            if self.client is None:
                self.client = gear.Client("magickbox-routing")
                for host, port in self.servers:
                    self.client.addServer(host, port)
                self.client.waitForServer(timeout=10)
            self.client.submitJob(gear.Job(ROUTE_FUNCTION.encode(), request.encode(), unique=request.unique),
                                  background=True, timeout=10)
        except Exception as exc:
            if not self._warned:
                log.warning("cannot queue route sends on gearman (%s); they are retried", exc)
                self._warned = True
            if row["state"] == PENDING:
                self.store.unclaim(row["id"], f"could not be queued: {exc}")
            return False
        self._warned = False
        self._submitted[row["id"]] = time.time()
        return True

    def reconcile(self) -> None:
        """Attempts that ended become the send's state; a dead worker's attempt counts as a
        failed one; an attempt nobody took is queued again."""
        now = time.time()
        for row in self.store.sending():
            files = SendFiles(self.layout, row["job_id"], row["id"])
            outcome = files.outcome(row["attempts"])
            if outcome is not None:
                self._submitted.pop(row["id"], None)
                self._finish(row, files, outcome)
                continue
            claim = files.claim_state()
            if claim == "live":
                continue
            if claim == "stale":
                files.remove_stale_claim()
                self._submitted.pop(row["id"], None)
                acked = files.acked()
                self.store.record_acks(row["id"], acked)
                self._log(row["job_id"], [f"send to {_where(row)} (rule {row['rule_index']}, attempt "
                                          f"{row['attempts']}): the worker died; {len(acked)} file(s) acknowledged"])
                self._after_failure(row, "the worker died during the send", len(acked), 0)
                continue
            submitted = self._submitted.get(row["id"])
            if (submitted is None or now - submitted > self.resubmit_after) and not self._queue(row):
                return

    def _finish(self, row: dict[str, Any], files: SendFiles, outcome: dict[str, Any]) -> None:
        job_id = row["job_id"]
        acked = files.acked()
        self.store.record_acks(row["id"], acked)
        sent = len(acked)
        failed = outcome.get("failed") or []
        error = outcome.get("association_error") or ""
        lines = [f"send to {_where(row)} (rule {row['rule_index']}, attempt {row['attempts']}, "
                 f"worker {outcome.get('worker')}): {outcome.get('sent_now', 0)} sent now, "
                 f"{outcome.get('acknowledged_before', 0)} acknowledged before, {len(failed)} failed, "
                 f"{outcome.get('not_dicom', 0)} not DICOM"]
        if error:
            lines.append(f"  {error}")
        else:
            lines += [f"  {path}: {why}" for path, why in failed[:50]]
        self._log(job_id, lines)
        if outcome.get("ok"):
            self.store.finish(row, SENT, time.time(), "", sent, 0)
            log.info("job %d: %d file(s) sent to %s%s", job_id, sent, _where(row),
                     f" ({outcome.get('acknowledged_before')} in an earlier attempt)"
                     if outcome.get("acknowledged_before") else "")
            return
        if not error:
            why = failed[0][1] if failed else ""
            status = re.search(r"0x[0-9A-Fa-f]{4}", why)
            # file names are SOP UIDs and a peer's comment is free text: both stay in routing.log
            error = (f"{len(failed)} file(s) not stored (first: {status.group(0) if status else 'refused'}); "
                     "details in the job's routing.log")
        self._after_failure(row, error, sent, len(failed))

    def _after_failure(self, row: dict[str, Any], error: str, sent: int, failed: int) -> None:
        attempts = row["attempts"]
        if attempts > row["retry_count"]:
            self.store.finish(row, FAILED, time.time(), error, sent, failed)
            self._log(row["job_id"], [f"send to {_where(row)} failed for good after {attempts} attempt(s): {error}"])
            log.error("job %d: send to %s failed after %d attempt(s): %s", row["job_id"], _where(row), attempts, error)
            return
        delay = row["retry_backoff"] * 2 ** (attempts - 1)
        self.store.finish(row, PENDING, time.time() + delay, error, sent, failed)
        log.warning("job %d: send to %s failed (attempt %d of %d), retry in %.0f s: %s", row["job_id"], _where(row),
                    attempts, row["retry_count"] + 1, delay, error)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        interrupted = len(self.store.sending())
        if interrupted:
            log.info("resuming %d send(s) interrupted by the last stop", interrupted)
        self._loop.start()

    def stop(self) -> None:
        self._stopping.set()
        self._loop.stop()
        if self.client is not None:
            try:
                self.client.shutdown()
            except Exception:
                pass


def _where(row: dict[str, Any]) -> str:
    return f"{row['called_ae']}@{row['host']}:{row['port']}"
