"""Service events: durable local store, and copies in graphite-web for Grafana annotations.

A service event ("coil replaced", "RF amplifier exchanged") starts a new baseline phase for
its scanner (or only for one coil of it) at its time ``when``: scans at or after ``when``
belong to the new phase.

The store is ``<state_dir>/events.json`` — the truth.  It is rewritten atomically (temporary
file, fsync, rename, directory fsync) under an exclusive ``flock`` on ``events.lock``, so an
``hops-qa event add`` and a running evaluator never lose each other's changes.  An event is
stored *before* it is sent to graphite-web; one that could not be sent is marked
``posted: false`` and sent again by ``hops-qa event sync`` or the running evaluator.  Before
sending, graphite-web is asked whether the event is already there (its ``data`` carries the
HOPS event id), so a retry never creates a second annotation.

Graphite events carry the tags ``hops``, ``hops-service``, ``hops-service-<scanner>``, the
scanner name and, for a coil-specific event, ``coil-<coil>``.  Grafana's annotation query is
the single tag ``hops-service-$scanner``: graphite-web ignores tags it has never seen when it
matches several, so ``hops-service $scanner`` would show every scanner's events for a scanner
that has none yet, while one unknown tag matches nothing, as it should.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..core.errors import ConfigError
from ..core.fsutil import atomic_write
from ..core.graphite import sanitize_node
from .graphiteweb import GraphiteWeb, GraphiteWebError

__all__ = ["ServiceEvent", "EventStore", "EventStoreError", "SERVICE_TAG", "event_tags", "scanner_tag", "post_event",
           "sync_events"]

SERVICE_TAG = "hops-service"
_FORMAT = 1


class EventStoreError(OSError):
    """The event store cannot be read or written (message names the file)."""


@dataclass(frozen=True)
class ServiceEvent:
    """A service event.  ``when`` and ``created`` are epoch seconds; ``coil`` ``None`` = all coils."""

    id: str
    scanner: str
    what: str
    when: int
    coil: str | None = None
    created: int = 0
    posted: bool = False

    def applies_to(self, scanner: str, coil: str) -> bool:
        return self.scanner == scanner and (self.coil is None or self.coil == coil)

    def label(self) -> str:
        return f"{self.scanner}{'/' + self.coil if self.coil else ''}: {self.what}"


def scanner_tag(scanner: str) -> str:
    """The one tag that selects a scanner's service events."""
    return f"{SERVICE_TAG}-{scanner}"


def event_tags(event: ServiceEvent) -> list[str]:
    tags = ["hops", SERVICE_TAG, scanner_tag(event.scanner), event.scanner]
    if event.coil:
        tags.append(f"coil-{event.coil}")
    return tags


class EventStore:
    """``<state_dir>/events.json``; created on the first write."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.path = self.dir / "events.json"
        self.lock_path = self.dir / "events.lock"

    @contextlib.contextmanager
    def _locked(self, create: bool) -> Iterator[None]:
        if create:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EventStoreError(f"cannot create the state directory {self.dir}: {exc.strerror or exc}") from None
        elif not self.dir.exists():
            yield
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EventStoreError(f"cannot open {self.lock_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[ServiceEvent]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EventStoreError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(text)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            return [ServiceEvent(**e) for e in doc["events"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EventStoreError(f"{self.path} is damaged ({exc}); it is left as it is — fix or move it "
                                  "away, then run again") from None

    def _write(self, events: Sequence[ServiceEvent]) -> None:
        doc = {"format": _FORMAT, "events": [dataclasses.asdict(e) for e in sorted(events, key=lambda e: e.when)]}
        try:
            atomic_write(self.path, json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            raise EventStoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def list(self, scanner: str | None = None) -> list[ServiceEvent]:
        """All events (of ``scanner``), oldest first."""
        with self._locked(create=False):
            events = self._read()
        return [e for e in events if scanner is None or e.scanner == scanner]

    def add(self, scanner: str, what: str, when: int, coil: str | None = None) -> ServiceEvent:
        """Store a new event durably and return it (not yet posted)."""
        if sanitize_node(scanner) != scanner:
            raise ConfigError("--scanner", f"{scanner!r}: only letters, digits, '_' and '-' are allowed")
        if coil is not None and sanitize_node(coil) != coil:
            raise ConfigError("--coil", f"{coil!r}: only letters, digits, '_' and '-' are allowed")
        if not what.strip():
            raise ConfigError("--what", "describe the service event, e.g. 'coil replaced'")
        event = ServiceEvent(uuid.uuid4().hex, scanner, what.strip(), int(when), coil, int(time.time()), False)
        with self._locked(create=True):
            events = self._read()
            events.append(event)
            self._write(events)
        return event

    def mark_posted(self, event_id: str) -> None:
        with self._locked(create=True):
            events = self._read()
            self._write([dataclasses.replace(e, posted=True) if e.id == event_id else e for e in events])

    def fingerprint(self, scanner: str) -> tuple:
        """Changes whenever the events of ``scanner`` (their times and coils) change."""
        return tuple((e.id, e.when, e.coil) for e in self.list(scanner))


def post_event(web: GraphiteWeb, event: ServiceEvent) -> None:
    """Send ``event`` to graphite-web unless it is already there (raises GraphiteWebError)."""
    existing = web.events(event.when - 1, event.when + 1, [SERVICE_TAG])
    for item in existing:
        data = item.get("data") or ""
        if event.id in str(data):
            return
    data = json.dumps({"hops_event_id": event.id, "scanner": event.scanner, "coil": event.coil,
                       "what": event.what})
    web.post_event(event.label(), event.when, event_tags(event), data)


def sync_events(store: EventStore, web: GraphiteWeb) -> tuple[int, list[str]]:
    """Post every stored event not yet in graphite-web; returns (posted, errors)."""
    posted, errors = 0, []
    for event in store.list():
        if event.posted:
            continue
        try:
            post_event(web, event)
        except GraphiteWebError as exc:
            errors.append(f"event {event.id[:8]} ({event.label()}): {exc}")
            continue
        store.mark_posted(event.id)
        posted += 1
    return posted, errors
