"""The job directory: how the node, workers and runners share a job through files.

``<data>/jobs/<id>/``::

    info.json            MagickBox's info.json of the job (+ HOPS fields), written by the node
    input/<Series>/<SOP>.dcm
                         a frozen snapshot of the job's input (what its association set
                         delivered, or the whole study): hard links into the archive.  They
                         share the archive's inodes, so nothing may write through them:
                         containers get them read-only, the process runner a private copy
                         (:mod:`.runners`)
    active               the attempt running now (JSON: attempt, worker, host, pid, started);
                         its mtime is the worker's heartbeat
    cancel               present: cancellation requested
    attempts/<attempt>/  one run: output/ (the bucket's /output), processing.log, outcome.json
    result/              the committed attempt (renamed from attempts/<attempt>)

Workers never touch the database: they claim a job by creating ``active`` exclusively,
run the bucket into a fresh attempt directory, write ``outcome.json`` and **commit** by
renaming the attempt directory to ``result`` — a rename that fails if a result already
exists, so each job's result is committed exactly once even if a job is delivered twice.
The node turns ``result/outcome.json`` into the job's final status (see
:mod:`magickbox.jobqueue`).  Works on one host and on a data root shared by several hosts.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from stability_collector.core.fsutil import atomic_write

from .layout import DataLayout
from .model import AttemptOutcome, ClaimRecord, JobStatus
from .store import DIR_MODE, FILE_MODE, make_private_dir

__all__ = ["JobDir", "Claim", "decide_status", "read_proc_json", "regular_files", "HEARTBEAT_SECONDS", "STALE_SECONDS"]

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 15.0


def regular_files(root: Path) -> Iterator[tuple[Path, int]]:
    """(path, size in bytes) of the regular files under ``root``, sorted by path; symbolic
    links (to files or directories, ``root`` itself included) are neither followed nor
    listed: a bucket's output may not point at data it was not given."""
    if not root.is_dir() or root.is_symlink():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield path, st.st_size


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1), FILE_MODE)


def read_proc_json(*candidates: Path) -> tuple[str | None, str]:
    """(success value, message) from the first existing MagickBox ``proc.json``
    (``[{"success": "...", "message": "..."}]``), or (None, why) when it is missing or
    malformed."""
    for path in candidates:
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return None, f"proc.json is not valid JSON: {exc}"
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "success" not in data[0]:
            return None, 'proc.json must be [{"success": "...", "message": "..."}]'
        return str(data[0]["success"]), str(data[0].get("message", ""))
    return None, "the bucket wrote no proc.json"


def decide_status(exit_code: int | None, timed_out: bool, cancelled: bool, proc: tuple[str | None, str],
                  timeout: float) -> tuple[JobStatus, str]:
    """Job status and message from how the run ended and what proc.json says.  Only an
    exit code 0 *and* a proc.json saying success/partial counts as success/partial."""
    success, message = proc
    if cancelled:
        return JobStatus.CANCELLED, "cancelled on request"
    if timed_out:
        return JobStatus.TIMEOUT, f"killed after the bucket's timeout of {timeout:g} s"
    if exit_code != 0:
        detail = f"; proc.json: {success}: {message}" if success is not None else ""
        return JobStatus.FAILED, f"exit code {exit_code}{detail}"
    if success is None:
        return JobStatus.FAILED, message    # missing or malformed proc.json, never silently success
    value = success.strip().lower()
    if value in (JobStatus.SUCCESS, JobStatus.PARTIAL, JobStatus.FAILED):
        return JobStatus(value), message
    return JobStatus.FAILED, f"proc.json says success={success!r}: {message}"


class Claim:
    """An attempt holding ``active``; heartbeats in a thread until released."""

    def __init__(self, jobdir: "JobDir", attempt: str, worker: str):
        self.jobdir = jobdir
        self.attempt = attempt
        self.worker = worker
        self.dir = jobdir.attempts / attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{attempt[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.jobdir.active)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            if ClaimRecord.from_json(self.jobdir.active.read_text()).attempt == self.attempt:
                self.jobdir.active.unlink()
        except (OSError, ValueError):
            pass


class JobDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def of(cls, layout: DataLayout, job_id: int) -> "JobDir":
        return cls(layout.job_dir(job_id))

    input = property(lambda self: self.path / "input")
    attempts = property(lambda self: self.path / "attempts")
    result = property(lambda self: self.path / "result")
    active = property(lambda self: self.path / "active")
    info_path = property(lambda self: self.path / "info.json")

    def info(self) -> dict[str, Any]:
        return json.loads(self.info_path.read_text())

    # -- node side ---------------------------------------------------------------------
    def prepare(self, info: dict[str, Any], study_dir: Path,
                instances: Iterable[tuple[str, str]] | None = None) -> None:
        """Write info.json and link the job's input into input/: the archived files of
        ``instances`` ((series UID, SOP Instance UID) pairs), or of the whole study when
        None.  Idempotent and safe to run concurrently (files archived later are added,
        nothing is removed)."""
        make_private_dir(self.path)
        self.attempts.mkdir(mode=DIR_MODE, exist_ok=True)
        self.input.mkdir(mode=DIR_MODE, exist_ok=True)
        if instances is None:
            files = [(series.name, f) for series in (study_dir.iterdir() if study_dir.is_dir() else ())
                     if series.is_dir() and not series.name.startswith(".")
                     for f in series.iterdir() if f.suffix == ".dcm" and f.is_file()]
        else:
            files = [(series, study_dir / series / f"{sop}.dcm") for series, sop in instances]
        made: set[str] = set()
        for series, source in files:
            target = self.input / series
            if series not in made:
                target.mkdir(mode=DIR_MODE, exist_ok=True)
                made.add(series)
            try:
                os.link(source, target / source.name)
            except FileExistsError:
                pass                          # linked before, or by a concurrent prepare
            except FileNotFoundError:
                if instances is None:
                    raise
        _write_json(self.info_path, info)

    def request_cancel(self) -> None:
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()

    def active_claim(self) -> ClaimRecord | None:
        """The live claim, or None if none or stale (heartbeat too old, or a dead
        process on this host)."""
        try:
            st = self.active.stat()
            claim = ClaimRecord.from_json(self.active.read_text())
        except (OSError, ValueError):
            return None
        if time.time() - st.st_mtime > STALE_SECONDS:
            return None
        if claim.host == socket.gethostname():
            try:
                os.kill(claim.pid, 0)
            except (ProcessLookupError, ValueError):
                return None
            except PermissionError:
                pass
        return claim

    def attempt_outcomes(self) -> list[AttemptOutcome]:
        out = []
        if self.attempts.is_dir():
            for d in sorted(self.attempts.iterdir()):
                if (d / "outcome.json").exists():
                    try:
                        out.append(AttemptOutcome.load(d / "outcome.json"))
                    except (OSError, ValueError, TypeError):
                        continue
        return out

    def committed(self) -> AttemptOutcome | None:
        try:
            return AttemptOutcome.load(self.result / "outcome.json")
        except (OSError, ValueError, TypeError):
            return None

    # -- worker side -------------------------------------------------------------------
    def claim(self, worker: str) -> Claim | None:
        """Take the job for a new attempt, or None if it has a result or a live attempt."""
        if self.result.exists():
            return None
        attempt = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        record = ClaimRecord(attempt, worker, socket.gethostname(), os.getpid(), time.time()).to_json()
        for _ in range(2):
            try:
                fd = os.open(self.active, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                if self.active_claim() is not None:
                    return None
                stale = self.active.with_name(f"active.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(self.active, stale)      # break a dead attempt's claim
                    stale.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(record)
            if self.result.exists():                  # committed while we were claiming
                self.active.unlink()
                return None
            (self.attempts / attempt / "output").mkdir(mode=DIR_MODE, parents=True)
            return Claim(self, attempt, worker)
        return None

    def write_outcome(self, claim: Claim, outcome: AttemptOutcome) -> None:
        _write_json(claim.dir / "outcome.json", asdict(outcome))

    def commit(self, claim: Claim) -> bool:
        """Make this attempt the job's result; False if another attempt already did."""
        try:
            os.rename(claim.dir, self.result)
        except OSError:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass
        return True
