"""Continuous ingest: inotify (``watchdog``) wakes the loop early, polling guarantees it.

Scanner shares are usually SMB or NFS mounts on which inotify sees nothing written by
the scanner, so the loop always polls every ``poll_interval`` seconds; on local
filesystems the inotify events make new reports appear within about a second.  If
inotify cannot be used at all (no watchdog, watch limit reached) the loop polls only.
While a file waits to settle, or Graphite is down, the loop re-checks sooner
(``retry_interval``, and at most one connection attempt per ``retry_interval`` while
Graphite is down); a report held because its scan time is in the future is looked at
again when it is due.

Only events that can bring new work wake the loop: a file created, written, closed
after writing or moved into the directory.  The loop's own reads (open, access,
close-without-write) and its own moves out of the directory do not.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .ingest import Ingestor, Outcome, PassSummary

__all__ = ["watch"]

log = logging.getLogger("hops.stability")


def _start_observer(ingestor: Ingestor, wake: threading.Event):
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency
        log.warning("watchdog is not installed; polling only")
        return None

    from watchdog import events

    waking = tuple(getattr(events, name) for name in ("FileCreatedEvent", "FileModifiedEvent", "FileClosedEvent",
                                                      "FileMovedEvent") if hasattr(events, name))

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event):  # noqa: D401 - watchdog callback
            if isinstance(event, waking) and not event.is_directory:
                wake.set()

    observer = Observer()
    handler = _Wake()
    watched = 0
    for source in ingestor.sources:
        try:
            try:    # watchdog >= 4: do not even subscribe to open/access events
                observer.schedule(handler, str(source.directory), recursive=False, event_filter=list(waking))
            except TypeError:
                observer.schedule(handler, str(source.directory), recursive=False)
            watched += 1
        except OSError as exc:
            log.warning("cannot watch %s with inotify (%s); polling it", source.directory, exc)
    if not watched:
        return None
    try:
        observer.start()
    except OSError as exc:
        log.warning("inotify unavailable (%s); polling only", exc)
        return None
    return observer


def watch(ingestor: Ingestor, poll_interval: float = 30.0, retry_interval: float = 5.0,
          use_inotify: bool = True, stop: threading.Event | None = None,
          on_pass: Callable[[PassSummary], None] | None = None) -> None:
    """Run ingest passes until ``stop`` is set.  ``on_pass`` sees every pass summary."""
    stop = stop or threading.Event()
    wake = threading.Event()
    ingestor.retry_interval = retry_interval
    observer = _start_observer(ingestor, wake) if use_inotify else None
    mode = "inotify + polling every %gs" % poll_interval if observer else "polling every %gs" % poll_interval
    log.info("watching %s (%s)", ", ".join(str(s.directory) for s in ingestor.sources), mode)
    try:
        while not stop.is_set():
            wake.clear()
            summary = ingestor.run_pass()
            if on_pass is not None:
                on_pass(summary)
            delay = poll_interval
            retry = [r for r in summary.left_in_place if r.outcome is not Outcome.HELD]
            if retry or not summary.complete:
                delay = min(delay, retry_interval)
            due = [r.retry_at for r in summary.left_in_place if r.retry_at is not None]
            if due:
                delay = min(delay, max(0.2, min(due) - time.time()))
            if ingestor.tracker.pending:
                delay = min(delay, max(0.2, ingestor.settings.settle_seconds / 2))
            deadline = time.monotonic() + delay
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if wake.wait(min(remaining, 0.5)):
                    # debounce: a copy in progress fires many events
                    stop.wait(0.3)
                    break
    finally:
        if observer is not None:
            observer.stop()
            observer.join(5)
