"""One ingest pass over scanner directories: parse → metrics → deliver → archive.

For every ``Stability_*.txt`` file directly in a scanner directory:

1. parse it (:mod:`.report`);
2. if it parses: name and time-stamp its values (:mod:`.metrics`), deliver them with
   confirmation (:mod:`.delivery`) and only then move the file to ``<dir>/ingested/``.
   If Graphite does not confirm, the file stays and is retried next pass;
3. if it does not parse: once it has *settled* (unchanged for ``settle_seconds``, so a
   file still being copied is never judged), move it to ``<dir>/failed/`` with a
   ``.error`` file naming the line and what was expected.  Before that it waits.

Sub-directories, files with other names and files that vanish mid-pass are skipped; one
bad file never stops the others.  The Diamond collector, the ``hops-stability`` CLI and
the watcher all drive this same :class:`Ingestor`.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Sequence

from .archive import ArchiveError, move_without_overwrite, quarantine
from .delivery import DeliveryError, GraphiteSender
from .metrics import ConfigError, MetricLayout, ReportMetrics, report_metrics, resolve_timezone
from .report import ReportParseError, is_report_name, parse_report

__all__ = [
    "ScannerSource",
    "IngestSettings",
    "Outcome",
    "ReportResult",
    "PassSummary",
    "SettleTracker",
    "Ingestor",
    "parse_source_spec",
    "scanner_name_for",
]

log = logging.getLogger("hops.stability")

DEFAULT_ARCHIVE_SUBDIR = "ingested"
DEFAULT_FAILED_SUBDIR = "failed"
DEFAULT_SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class ScannerSource:
    """A scanner's report directory.  ``timezone`` is an IANA name (``None``: host zone)."""

    name: str
    directory: Path
    timezone: str | None = None


def parse_source_spec(spec: str, timezone: str | None = None, key: str = "directories") -> ScannerSource:
    """``DIR`` (scanner name = the directory's basename) or ``NAME=DIR``."""
    spec = spec.strip()
    if not spec:
        raise ConfigError(key, "empty directory")
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or not name.strip():
        name, path = "", spec
    directory = Path(path).expanduser()
    if not name:
        name = directory.resolve().name or str(directory)
    return ScannerSource(name.strip(), directory, timezone)


def scanner_name_for(path: Path, archive_subdirs: Iterable[str] = (DEFAULT_ARCHIVE_SUBDIR, DEFAULT_FAILED_SUBDIR)) -> str:
    """Default scanner name for a report file: its directory's basename, looking through
    an ``ingested``/``failed`` sub-directory."""
    parent = Path(path).resolve().parent
    if parent.name in set(archive_subdirs) and parent.parent != parent:
        parent = parent.parent
    return parent.name or "scanner"


@dataclass(frozen=True)
class IngestSettings:
    layout: MetricLayout = field(default_factory=MetricLayout)
    archive_subdir: str = DEFAULT_ARCHIVE_SUBDIR
    failed_subdir: str = DEFAULT_FAILED_SUBDIR
    settle_seconds: float = DEFAULT_SETTLE_SECONDS

    def validated(self) -> "IngestSettings":
        for key in ("archive_subdir", "failed_subdir"):
            value = getattr(self, key)
            if not value or "/" in value or value in (".", "..") or value.startswith("."):
                raise ConfigError(key, f"must be a plain sub-directory name, found {value!r}")
        if self.archive_subdir == self.failed_subdir:
            raise ConfigError("failed_subdir", "must differ from archive_subdir")
        if not self.settle_seconds >= 0:
            raise ConfigError("settle_seconds", f"must be >= 0, found {self.settle_seconds!r}")
        self.layout.validated()
        return self


class Outcome(enum.Enum):
    DELIVERED = "delivered"          # datapoints confirmed and the report archived
    UNDELIVERED = "undelivered"      # Graphite did not confirm; report left in place
    ARCHIVE_FAILED = "archive-failed"  # delivered, but the move failed; left in place
    WAITING = "waiting"              # does not parse yet, not settled; left in place
    QUARANTINED = "quarantined"      # does not parse, settled; moved to failed/
    VANISHED = "vanished"            # disappeared during the pass (someone moved it)

    @property
    def left_in_place(self) -> bool:
        return self in (Outcome.UNDELIVERED, Outcome.ARCHIVE_FAILED, Outcome.WAITING)


@dataclass(frozen=True)
class ReportResult:
    source: ScannerSource
    path: Path
    outcome: Outcome
    detail: str = ""
    datapoints: int = 0
    moved_to: Path | None = None

    def describe(self) -> str:
        name = self.path.name
        if self.outcome is Outcome.DELIVERED:
            return f"delivered    {self.source.name}/{name}: {self.datapoints} datapoints, archived to {self.moved_to}"
        if self.outcome is Outcome.QUARANTINED:
            return f"quarantined  {self.source.name}/{name} -> {self.moved_to}: {self.detail}"
        return f"{self.outcome.value:<12} {self.source.name}/{name}: {self.detail}"


@dataclass
class PassSummary:
    results: list[ReportResult] = field(default_factory=list)
    complete: bool = True   # False when the pass stopped at its deadline

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def left_in_place(self) -> list[ReportResult]:
        return [r for r in self.results if r.outcome.left_in_place]

    def line(self) -> str:
        parts = [f"{self.count(o)} {o.value}" for o in Outcome if self.count(o)]
        text = ", ".join(parts) if parts else "no reports"
        return text + ("" if self.complete else " (pass cut short; the rest next time)")


class SettleTracker:
    """Decides when a file that does not parse has stopped changing.

    A file is *settled* when its (size, mtime, ctime, inode) has been observed unchanged
    for ``settle_seconds``.  With ``trust_file_times`` (one-shot passes, which have no
    earlier observation) a file whose mtime and ctime are both older than
    ``settle_seconds`` also counts as settled, unless it changed since it was last seen.
    """

    def __init__(self, settle_seconds: float, trust_file_times: bool = False,
                 clock: Callable[[], float] = time.time):
        self.settle_seconds = settle_seconds
        self.trust_file_times = trust_file_times
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int, int, int], float]] = {}

    def observe(self, path: Path, st: os.stat_result) -> bool:
        """Record an observation; True if the file counts as settled now."""
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        now = self.clock()
        prev = self._seen.get(path)
        if prev is not None and prev[0] == sig:
            if now - prev[1] >= self.settle_seconds:
                return True
            changed = False
        else:
            self._seen[path] = (sig, now)
            changed = prev is not None
        if self.trust_file_times and not changed:
            return now - max(st.st_mtime, st.st_ctime) >= self.settle_seconds
        return self.settle_seconds <= 0

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def retain(self, paths: set[Path]) -> None:
        """Drop state of files no longer present."""
        for p in list(self._seen):
            if p not in paths:
                del self._seen[p]

    @property
    def pending(self) -> int:
        return len(self._seen)


class Ingestor:
    """Runs ingest passes over ``sources``.  Keep one instance alive across passes (the
    watcher and the Diamond collector do) so settle observations accumulate."""

    def __init__(self, sources: Sequence[ScannerSource], settings: IngestSettings,
                 sender: GraphiteSender, trust_file_times: bool = False,
                 on_delivered: Callable[[ReportMetrics], None] | None = None):
        """``on_delivered`` is called with a report's metrics after Graphite confirmed
        them and before the report is archived (the Diamond collector mirrors them to
        Diamond's handlers there)."""
        self.sources = list(sources)
        self.on_delivered = on_delivered
        self.settings = settings.validated()
        self.sender = sender
        self.tracker = SettleTracker(settings.settle_seconds, trust_file_times)
        self._zones = {s.name: resolve_timezone(s.timezone, key=f"timezone of {s.name}") for s in self.sources}
        self._reported: dict[Path, str] = {}   # last message logged per file (no log spam)

    # -- helpers -------------------------------------------------------------------
    def metrics_for(self, source: ScannerSource, path: Path, data: bytes) -> ReportMetrics:
        report = parse_report(data, str(path))
        return report_metrics(report, source.name, self.settings.layout, self._zones[source.name])

    def _note(self, path: Path, level: int, message: str) -> None:
        if self._reported.get(path) != message:
            self._reported[path] = message
            log.log(level, "%s", message)

    def candidates(self, source: ScannerSource) -> list[Path]:
        """Report files directly in the source directory, oldest scan first."""
        try:
            entries = list(os.scandir(source.directory))
        except FileNotFoundError:
            self._note(source.directory, logging.WARNING, f"scanner directory {source.directory} does not exist")
            return []
        except OSError as exc:
            self._note(source.directory, logging.WARNING, f"cannot list {source.directory}: {exc}")
            return []
        self._reported.pop(source.directory, None)
        files = []
        for entry in entries:
            if not is_report_name(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            files.append(Path(entry.path))
        return sorted(files, key=lambda p: p.name)

    # -- the pass --------------------------------------------------------------------
    def run_pass(self, deadline: float | None = None,
                 report_guard: Callable[[], ContextManager[object]] = contextlib.nullcontext) -> PassSummary:
        """Process every candidate once.  ``deadline`` (``time.monotonic()`` value) cuts
        the pass short between reports (at least one report is always processed);
        unprocessed files are picked up next pass.
        ``report_guard()`` wraps each report (the Diamond collector blocks its kill
        signal there so a report is never interrupted half-way)."""
        summary = PassSummary()
        graphite_down: str | None = None
        present: set[Path] = set()
        for source in self.sources:
            for path in self.candidates(source):
                present.add(path)
                if deadline is not None and summary.results and time.monotonic() >= deadline:
                    summary.complete = False
                    break
                with report_guard():
                    result = self.process(source, path, skip_delivery_reason=graphite_down)
                if result.outcome is Outcome.UNDELIVERED and graphite_down is None:
                    graphite_down = result.detail
                summary.results.append(result)
            if not summary.complete:
                break
        if summary.complete:
            self.tracker.retain(present)
            for p in list(self._reported):
                if p not in present and p.suffix == ".txt":
                    del self._reported[p]
        return summary

    def process(self, source: ScannerSource, path: Path, skip_delivery_reason: str | None = None) -> ReportResult:
        """Ingest one report file (see the module docstring)."""
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            self.tracker.forget(path)
            return ReportResult(source, path, Outcome.VANISHED, "disappeared before it was read")
        except OSError as exc:
            self._note(path, logging.WARNING, f"cannot read {path}: {exc}")
            return ReportResult(source, path, Outcome.WAITING, f"cannot read: {exc}")
        try:
            metrics = self.metrics_for(source, path, data)
        except ReportParseError as exc:
            return self._handle_bad(source, path, st, exc)
        self.tracker.forget(path)
        if skip_delivery_reason is not None:
            return ReportResult(source, path, Outcome.UNDELIVERED, skip_delivery_reason)
        try:
            self.sender.deliver(metrics.graphite_lines())
        except DeliveryError as exc:
            self._note(path, logging.WARNING, f"{path.name}: not delivered, will retry: {exc}")
            return ReportResult(source, path, Outcome.UNDELIVERED, str(exc))
        if self.on_delivered is not None:
            self.on_delivered(metrics)
        try:
            target = move_without_overwrite(path, path.parent / self.settings.archive_subdir)
        except ArchiveError as exc:
            if not path.exists():  # another ingester archived it meanwhile
                return ReportResult(source, path, Outcome.VANISHED, "archived by someone else", len(metrics))
            self._note(path, logging.ERROR, f"{path.name}: delivered but not archived, will retry: {exc}")
            return ReportResult(source, path, Outcome.ARCHIVE_FAILED, str(exc), len(metrics))
        self._reported.pop(path, None)
        log.info("%s/%s: %d datapoints delivered, archived to %s", source.name, path.name, len(metrics), target)
        return ReportResult(source, path, Outcome.DELIVERED, "", len(metrics), target)

    def _handle_bad(self, source: ScannerSource, path: Path, st: os.stat_result,
                    exc: ReportParseError) -> ReportResult:
        if not self.tracker.observe(path, st):
            self._note(path, logging.INFO, f"{path.name}: not (yet) a complete report, waiting "
                       f"{self.settings.settle_seconds:g} s for it to settle: {exc}")
            return ReportResult(source, path, Outcome.WAITING, str(exc))
        try:
            target = quarantine(path, path.parent / self.settings.failed_subdir, str(exc))
        except ArchiveError as qexc:
            self._note(path, logging.ERROR, f"{path.name}: cannot quarantine: {qexc}")
            return ReportResult(source, path, Outcome.ARCHIVE_FAILED, f"{exc}; and cannot quarantine: {qexc}")
        self.tracker.forget(path)
        self._reported.pop(path, None)
        log.error("%s/%s quarantined to %s: %s", source.name, path.name, target, exc)
        return ReportResult(source, path, Outcome.QUARANTINED, str(exc), 0, target)
