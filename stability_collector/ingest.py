"""One ingest pass over scanner directories: parse → metrics → deliver → archive.

For every ``Stability_*.txt`` file directly in a scanner directory:

1. parse it (:mod:`.report`);
2. if it parses: name and time-stamp its values (:mod:`.metrics`), deliver them with
   confirmation (:mod:`.delivery`) and only then move the file to ``<dir>/ingested/``.
   If Graphite does not confirm, the file stays and is retried next pass;
3. if it does not parse: once it has *settled* (unchanged for ``settle_seconds``, so a
   file still being copied is never judged), move it to ``<dir>/failed/`` with a
   ``.error`` file naming the line and what was expected.  Before that it waits;
4. if its scan time is not at least :data:`MIN_AGE_SECONDS` before this host's clock,
   carbon would discard its datapoints (whisper keeps nothing from the future): it is
   *held* — not sent, not archived, one warning naming the file, the time and the zone —
   until that time has passed (a scanner east of the configured zone, a wrong scanner
   clock or a wrong ``timezone`` setting; the warning says which setting to check).

Sub-directories, files with other names and files that vanish mid-pass are skipped; one
bad file never stops the others.  The Diamond collector, the ``hops-stability`` CLI and
the watcher all drive this same :class:`Ingestor`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from .archive import ArchiveError, move_without_overwrite, quarantine
from .core import whisper_check
from .core.errors import ConfigError
from .core.graphite import DeliveryError, GraphiteSender
from .metrics import MetricLayout, ReportMetrics, report_metrics, resolve_timezone
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
    "split_source_spec",
    "MIN_AGE_SECONDS",
    "future_scan_message",
]

log = logging.getLogger("hops.stability")

DEFAULT_ARCHIVE_SUBDIR = "ingested"
DEFAULT_FAILED_SUBDIR = "failed"
DEFAULT_SETTLE_SECONDS = 30.0
#: A report is sent only once its scan time is at least this far behind this host's clock
#: (carbon discards datapoints from the future; the margin covers clocks a little apart).
MIN_AGE_SECONDS = 60


@dataclass(frozen=True)
class ScannerSource:
    """A scanner's report directory.  ``timezone`` is an IANA name (``None``: host zone);
    ``site`` the scanner's own site path for the ``upstream`` layout (``None``: the layout's)."""

    name: str
    directory: Path
    timezone: str | None = None
    site: str | None = None


def split_source_spec(spec: str, key: str = "directories") -> tuple[str | None, Path]:
    """``NAME=DIR`` -> (NAME, DIR); ``DIR`` -> (None, DIR)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError(key, "empty directory")
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or not name.strip():
        return None, Path(spec).expanduser()
    return name.strip(), Path(path).expanduser()


def parse_source_spec(spec: str, timezone: str | None = None, key: str = "directories") -> ScannerSource:
    """``DIR`` (scanner name = the directory's basename) or ``NAME=DIR``."""
    name, directory = split_source_spec(spec, key)
    return ScannerSource(name or directory.resolve().name or str(directory), directory, timezone)


@dataclass(frozen=True)
class IngestSettings:
    layout: MetricLayout = field(default_factory=MetricLayout)
    archive_subdir: str = DEFAULT_ARCHIVE_SUBDIR
    failed_subdir: str = DEFAULT_FAILED_SUBDIR
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    #: carbon's whisper directory, when this host can read it: a report is archived only
    #: after every datapoint was read back from there (carbon confirms what it has *read*;
    #: killed before writing, it loses it).  Not found within ``verify_timeout`` seconds:
    #: left in place and sent again.
    verify_whisper_dir: Path | None = None
    verify_timeout: float = 15.0

    def validated(self) -> "IngestSettings":
        for key in ("archive_subdir", "failed_subdir"):
            value = getattr(self, key)
            if not value or "/" in value or value in (".", "..") or value.startswith("."):
                raise ConfigError(key, f"must be a plain sub-directory name, found {value!r}")
        if self.archive_subdir == self.failed_subdir:
            raise ConfigError("failed_subdir", "must differ from archive_subdir")
        if not self.settle_seconds >= 0:
            raise ConfigError("settle_seconds", f"must be >= 0, found {self.settle_seconds!r}")
        if self.verify_whisper_dir is not None:
            whisper_check.check_whisper_dir(Path(self.verify_whisper_dir).resolve(), "verify_whisper_dir")
        self.layout.validated()
        return self


def missing_from_whisper(whisper_dir: Path, metrics: ReportMetrics, timeout: float) -> list[str]:
    """The metric paths of a report whose value is not (yet) in whisper under
    ``whisper_dir`` at the report's time, after polling for up to ``timeout`` seconds."""
    points = ((path, float(text), metrics.timestamp) for path, text in zip(metrics.paths, metrics.texts))
    return whisper_check.missing_from_whisper(whisper_dir, points, timeout)


class Outcome(enum.Enum):
    DELIVERED = "delivered"          # datapoints confirmed and the report archived
    UNDELIVERED = "undelivered"      # Graphite did not confirm; report left in place
    ARCHIVE_FAILED = "archive-failed"  # delivered, but the move failed; left in place
    WAITING = "waiting"              # does not parse yet, not settled; left in place
    QUARANTINED = "quarantined"      # does not parse, settled; moved to failed/
    VANISHED = "vanished"            # disappeared during the pass (someone moved it)
    HELD = "held"                    # scan time in the future: carbon would discard it; left in place

    @property
    def left_in_place(self) -> bool:
        return self in (Outcome.UNDELIVERED, Outcome.ARCHIVE_FAILED, Outcome.WAITING, Outcome.HELD)


@dataclass(frozen=True)
class ReportResult:
    source: ScannerSource
    path: Path
    outcome: Outcome
    detail: str = ""
    datapoints: int = 0
    moved_to: Path | None = None
    retry_at: float | None = None    # HELD: epoch seconds from which it can be sent

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
                 on_delivered: Callable[[ReportMetrics], None] | None = None,
                 logger: logging.Logger | None = None, retry_interval: float = 0.0,
                 clock: Callable[[], float] = time.time):
        """``on_delivered`` is called with a report's metrics after Graphite confirmed
        them and before the report is archived (the Diamond collector mirrors them to
        Diamond's handlers there).  ``logger``: where messages go (default
        ``hops.stability``; the Diamond collector passes Diamond's).  After a failed
        delivery, no new connection is tried for ``retry_interval`` seconds (the
        reports of passes in between are left undelivered with the same reason)."""
        self.sources = list(sources)
        self.on_delivered = on_delivered
        self.settings = settings.validated()
        self.sender = sender
        self.log = logger or log
        self.retry_interval = retry_interval
        self.clock = clock
        self.tracker = SettleTracker(settings.settle_seconds, trust_file_times)
        self._zones = {s.name: resolve_timezone(s.timezone, key=f"timezone of {s.name}") for s in self.sources}
        self._reported: dict[Path, str] = {}   # last message logged per file (no log spam)
        self._held: dict[Path, tuple[tuple[int, int, int, int], ReportResult]] = {}
        self._graphite_down: tuple[float, str] | None = None   # (monotonic retry time, reason)

    # -- helpers -------------------------------------------------------------------
    def metrics_for(self, source: ScannerSource, path: Path, data: bytes) -> ReportMetrics:
        report = parse_report(data, str(path))
        return report_metrics(report, source.name, self.settings.layout, self._zones[source.name], source.site)

    def _note(self, path: Path, level: int, message: str) -> None:
        if self._reported.get(path) != message:
            self._reported[path] = message
            self.log.log(level, "%s", message)

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
        if self._graphite_down is not None and time.monotonic() < self._graphite_down[0]:
            graphite_down = self._graphite_down[1]      # retry the connection later, not every pass
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
                    self._graphite_down = (time.monotonic() + self.retry_interval, result.detail)
                elif result.outcome is Outcome.DELIVERED:
                    self._graphite_down = None
                summary.results.append(result)
            if not summary.complete:
                break
        if summary.complete:
            self.tracker.retain(present)
            for p in list(self._held):
                if p not in present:
                    del self._held[p]
            for p in list(self._reported):
                if p not in present and p.suffix == ".txt":
                    del self._reported[p]
        return summary

    def process(self, source: ScannerSource, path: Path, skip_delivery_reason: str | None = None) -> ReportResult:
        """Ingest one report file (see the module docstring)."""
        held = self._held.get(path)
        if held is not None:                # not re-read until it is due or changes
            try:
                st = os.stat(path)
            except OSError:
                st = None
            if st is not None and _signature(st) == held[0] and self.clock() < (held[1].retry_at or 0):
                return held[1]
            del self._held[path]
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
        now = self.clock()
        if metrics.timestamp > now - MIN_AGE_SECONDS:
            result = self._hold(source, path, metrics, now)
            self._held[path] = (_signature(st), result)
            return result
        if skip_delivery_reason is not None:
            return ReportResult(source, path, Outcome.UNDELIVERED, skip_delivery_reason)
        try:
            self.sender.deliver(metrics.graphite_lines())
        except DeliveryError as exc:
            self._note(path, logging.WARNING, f"{path.name}: not delivered, will retry: {exc}")
            return ReportResult(source, path, Outcome.UNDELIVERED, str(exc))
        if self.settings.verify_whisper_dir is not None:
            missing = missing_from_whisper(self.settings.verify_whisper_dir, metrics, self.settings.verify_timeout)
            if missing:
                detail = (f"carbon confirmed, but {len(missing)} of {len(metrics)} datapoints are not in whisper "
                          f"under {self.settings.verify_whisper_dir} after {self.settings.verify_timeout:g} s "
                          f"(e.g. {missing[0]}); will send again")
                self._note(path, logging.WARNING, f"{path.name}: {detail}")
                return ReportResult(source, path, Outcome.UNDELIVERED, detail)
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
        self.log.info("%s/%s: %d datapoints delivered, archived to %s", source.name, path.name, len(metrics), target)
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
        self.log.error("%s/%s quarantined to %s: %s", source.name, path.name, target, exc)
        return ReportResult(source, path, Outcome.QUARANTINED, str(exc), 0, target)

    def _hold(self, source: ScannerSource, path: Path, metrics: ReportMetrics, now: float) -> ReportResult:
        due = metrics.timestamp + MIN_AGE_SECONDS
        detail = future_scan_message(metrics, source, now)
        self._note(path, logging.WARNING, f"{path}: {detail}")
        return ReportResult(source, path, Outcome.HELD, detail, len(metrics), retry_at=due)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _utc(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ahead(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} min"


def future_scan_message(metrics: ReportMetrics, source: ScannerSource, now: float) -> str:
    """Why a report whose scan time is in the future is held: its time and zone."""
    zone = source.timezone or f"this host's zone ({_dt.datetime.now().astimezone().tzname()})"
    scan = metrics.report.scan_time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"held, not sent: scan time {scan} in time zone {zone} is {_utc(metrics.timestamp)}, "
            f"{_ahead(metrics.timestamp - now)} ahead of this host's clock ({_utc(now)}), and carbon discards "
            f"datapoints from the future; it is sent once that time has passed (from "
            f"{_utc(metrics.timestamp + MIN_AGE_SECONDS)}). If the scan is not really in the future, the "
            f"scanner's clock or its time zone is wrong (setting 'timezone', or scanners.{source.name}.timezone)")
