"""Route sends as gearman jobs: what the node and the worker share through files.

The node (:mod:`magickbox.results.outflow`) owns the send records in its database; a send
attempt runs on a worker like a bucket run does — the gearman function ``route``, payload
``{"job": J, "send": S, "attempt": N}`` — and the worker needs only the data root, never
the database.  ``<data>/jobs/<J>/routing/``::

    send-<S>.json              the send: destination, files (relative to the job
                               directory), attempt number, timeout (written by the node)
    send-<S>.acks              one line "SOPInstanceUID STATUS" per file the destination
                               acknowledged, appended and fsynced before the next file
                               goes out (a resumed send skips these)
    send-<S>.active            the attempt running now (JSON; mtime = heartbeat)
    send-<S>.outcome-<N>.json  how attempt N ended (written by the worker, read by the node)

A delivery of an attempt that already has an outcome, or that another worker holds,
or that is not the send's current attempt, is skipped.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stability_collector.core.fsutil import atomic_write

from ..layout import DataLayout
from ..store import FILE_MODE, make_private_dir
from .send import Destination, FileResult, read_part10_header, send_files

__all__ = ["ROUTE_FUNCTION", "SendFiles", "RouteRequest", "run_route_send", "HEARTBEAT_SECONDS", "STALE_SECONDS"]

log = logging.getLogger("magickbox.route_worker")

ROUTE_FUNCTION = "route"
HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 15.0


class RouteRequest:
    """The gearman payload of one send attempt."""

    def __init__(self, job_id: int, send_id: int, attempt: int):
        self.job_id, self.send_id, self.attempt = job_id, send_id, attempt

    def encode(self) -> bytes:
        return json.dumps({"job": self.job_id, "send": self.send_id, "attempt": self.attempt}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "RouteRequest":
        """Raises ValueError for a payload that is not a route request."""
        try:
            data = json.loads(payload)
            return cls(int(data["job"]), int(data["send"]), int(data["attempt"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a route request: {payload[:100]!r}") from exc

    @property
    def unique(self) -> bytes:
        return f"hops-route-{self.send_id}-{self.attempt}".encode()


class SendFiles:
    """The files of one send in a job's ``routing/`` directory."""

    def __init__(self, layout: DataLayout, job_id: int, send_id: int):
        self.dir = layout.job_dir(job_id) / "routing"
        self.job_dir = layout.job_dir(job_id)
        self.send_id = send_id
        self.spec_path = self.dir / f"send-{send_id}.json"
        self.acks_path = self.dir / f"send-{send_id}.acks"
        self.active_path = self.dir / f"send-{send_id}.active"

    def outcome_path(self, attempt: int) -> Path:
        return self.dir / f"send-{self.send_id}.outcome-{attempt}.json"

    # -- node side
    def write_spec(self, spec: dict[str, Any]) -> None:
        make_private_dir(self.dir)
        atomic_write(self.spec_path, json.dumps(spec), FILE_MODE)

    def outcome(self, attempt: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.outcome_path(attempt).read_text())
        except (OSError, ValueError):
            return None

    def claim_state(self) -> str:
        """``"none"``, ``"live"`` (an attempt runs) or ``"stale"`` (its worker died)."""
        try:
            st = self.active_path.stat()
            claim = json.loads(self.active_path.read_text())
        except FileNotFoundError:
            return "none"
        except (OSError, ValueError):
            # unreadable: stale only once nobody has touched it for STALE_SECONDS
            try:
                fresh = time.time() - self.active_path.stat().st_mtime <= STALE_SECONDS
            except OSError:
                return "none"
            return "live" if fresh else "stale"
        if time.time() - st.st_mtime > STALE_SECONDS:
            return "stale"
        if claim.get("host") == socket.gethostname():
            try:
                os.kill(int(claim.get("pid", 0)), 0)
            except (ProcessLookupError, ValueError):
                return "stale"
            except PermissionError:
                pass
        return "live"

    def remove_stale_claim(self) -> None:
        try:
            os.rename(self.active_path, self.active_path.with_name(f"{self.active_path.name}.stale-"
                                                                     f"{uuid.uuid4().hex[:8]}"))
        except FileNotFoundError:
            pass

    # -- both
    def acked(self) -> dict[str, int]:
        """SOP Instance UID -> status of every file the destination acknowledged."""
        out: dict[str, int] = {}
        try:
            text = self.acks_path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():       # a torn last line is ignored
                out[parts[0]] = int(parts[1])
        return out


def _claim(files: SendFiles, attempt: int, worker: str) -> bool:
    record = json.dumps({"attempt": attempt, "worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.time()})
    # written aside, then linked into place (never replaces): nobody sees a half-written claim
    staged = files.active_path.with_name(f"{files.active_path.name}.new-{uuid.uuid4().hex[:8]}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        fh.write(record)
    try:
        for _ in range(2):
            try:
                os.link(staged, files.active_path)
            except FileExistsError:
                if files.claim_state() == "live":
                    return False
                files.remove_stale_claim()
                continue
            return True
        return False
    finally:
        staged.unlink(missing_ok=True)


def run_route_send(layout: DataLayout, request: RouteRequest, worker: str,
                   stop: threading.Event | None = None) -> dict[str, Any] | None:
    """Run one send attempt (worker side); its outcome, or None when it was skipped (not
    the current attempt, done already, or running elsewhere).  When ``stop`` is set the
    attempt ends after the file in flight, without an outcome (the node resumes it)."""
    files = SendFiles(layout, request.job_id, request.send_id)
    try:
        spec = json.loads(files.spec_path.read_text())
    except (OSError, ValueError):
        return None
    if int(spec.get("attempt", -1)) != request.attempt or files.outcome_path(request.attempt).exists():
        return None
    if not _claim(files, request.attempt, worker):
        return None
    beating = threading.Event()

    def heartbeat() -> None:
        while not beating.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(files.active_path)
            except FileNotFoundError:
                return                      # the claim was taken away: nothing to keep alive
            except OSError as exc:          # transient (e.g. a busy network share): keep beating
                log.warning("send %d: claim heartbeat failed: %s", request.send_id, exc.strerror or exc)

    beat = threading.Thread(target=heartbeat, name=f"route-heartbeat-{request.send_id}", daemon=True)
    beat.start()
    try:
        acked = files.acked()
        todo: list[Path] = []
        for rel in spec["files"]:
            path = files.job_dir / rel
            try:
                header = read_part10_header(path)
            except OSError:
                header = None
            if header is not None and header.sop_instance_uid in acked:
                continue
            todo.append(path)
        d = spec["destination"]
        destination = Destination(d["host"], int(d["port"]), d["called_ae"], d["calling_ae"])
        with open(files.acks_path, "a", encoding="ascii") as acks:
            def acknowledged(result: FileResult) -> None:
                if result.ok:
                    acks.write(f"{result.sop_instance_uid} {result.status or 0}\n")
                    acks.flush()
                    os.fdatasync(acks.fileno())
                if stop is not None and stop.is_set():
                    raise _Stopped()
            try:
                report = send_files(todo, destination, timeout=float(spec.get("timeout", 30)),
                                    on_result=acknowledged)
            except _Stopped:
                return None
        outcome = {"attempt": request.attempt, "worker": worker, "ok": report.ok,
                   "association_error": report.association_error, "sent_now": len(report.sent),
                   "acknowledged_before": len(acked),
                   "failed": [[str(f.path.relative_to(files.job_dir)), f.error] for f in report.failed],
                   "not_dicom": sum(f.skipped for f in report.files), "seconds": report.seconds,
                   "finished": time.time()}
        atomic_write(files.outcome_path(request.attempt), json.dumps(outcome), FILE_MODE)
        return outcome
    finally:
        beating.set()
        beat.join(5)
        try:
            if json.loads(files.active_path.read_text()).get("attempt") == request.attempt:
                files.active_path.unlink()
        except (OSError, ValueError):
            pass


class _Stopped(Exception):
    """The worker is stopping; the attempt is left for the node to resume."""
