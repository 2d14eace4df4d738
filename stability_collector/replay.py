"""Re-send archived reports (after a Graphite rebuild or a schema change).

Reads ``Stability_*.txt`` in an archive directory (usually ``<scanner dir>/ingested``),
optionally only scans since/until a date, and delivers each report with confirmation.
Nothing is moved.  Safe to repeat: Graphite keeps one value per slot, so re-sending the
same report writes the same values again.  A report whose scan time is in the future is
not sent (carbon would discard it) and is counted as held.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .core.graphite import DeliveryError, GraphiteSender
from .ingest import MIN_AGE_SECONDS, ScannerSource, future_scan_message
from .metrics import MetricLayout, report_metrics, resolve_timezone
from .report import ReportParseError, is_report_name, read_report, scan_time_from_name

__all__ = ["ReplaySummary", "replay"]


@dataclass
class ReplaySummary:
    delivered: int = 0
    datapoints: int = 0
    skipped: int = 0
    unparsable: list[str] = field(default_factory=list)
    undelivered: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.delivered} report(s) re-sent ({self.datapoints} datapoints), "
                f"{self.skipped} outside the date range, {len(self.unparsable)} unparsable, "
                f"{len(self.undelivered)} not delivered"
                + (f", {len(self.held)} held (scan time in the future)" if self.held else ""))


def replay(archive_dir: Path, scanner: str, layout: MetricLayout, sender: GraphiteSender,
           timezone: str | None = None, since: _dt.datetime | None = None,
           until: _dt.datetime | None = None, progress: bool = True,
           echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
           source: ScannerSource | None = None) -> ReplaySummary:
    """Re-deliver every report in ``archive_dir`` whose scan time is in [since, until).
    ``source`` (the resolved scanner) supplies a scanner's own site path."""
    tz = resolve_timezone(timezone)
    source = source or ScannerSource(scanner, Path(archive_dir), timezone)
    summary = ReplaySummary()
    files = []
    for path in sorted(p for p in Path(archive_dir).iterdir() if p.is_file() and is_report_name(p.name)):
        try:
            when = scan_time_from_name(path.name)
        except ReportParseError as exc:
            summary.unparsable.append(str(exc))
            continue
        if (since and when < since) or (until and when >= until):
            summary.skipped += 1
            continue
        files.append(path)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(files), unit="report", desc=f"replay {scanner}", file=sys.stderr)
    graphite_down = None
    try:
        for path in files:
            if bar is not None:
                bar.update(1)
            if graphite_down:
                summary.undelivered.append(f"{path.name}: {graphite_down}")
                continue
            try:
                metrics = report_metrics(read_report(path), scanner, layout, tz, source.site)
            except ReportParseError as exc:
                summary.unparsable.append(str(exc))
                continue
            except OSError as exc:
                summary.undelivered.append(f"{path.name}: cannot read: {exc}")
                continue
            now = time.time()
            if metrics.timestamp > now - MIN_AGE_SECONDS:
                summary.held.append(f"{path}: {future_scan_message(metrics, source, now)}")
                continue
            try:
                sender.deliver(metrics.graphite_lines())
            except DeliveryError as exc:
                graphite_down = str(exc)
                summary.undelivered.append(f"{path.name}: {exc}")
                continue
            summary.delivered += 1
            summary.datapoints += len(metrics)
    finally:
        if bar is not None:
            bar.close()
    for msg in summary.unparsable:
        echo(f"unparsable: {msg}")
    for msg in summary.undelivered[:10]:
        echo(f"not delivered: {msg}")
    for msg in summary.held:
        echo(msg)
    return summary
