"""``hops-stability demo``: the whole stability pipeline on a laptop in one command.

Starts a private carbon-cache (and graphite-web when installed) on loopback ports,
generates the sample reports (the same files as ``sample_statfiles/``) into two scanner
directories, runs one ingest pass and prints values read back from whisper.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .core.graphite import GraphiteAddress, GraphiteSender
from .ingest import Ingestor, IngestSettings, ScannerSource
from .localgraphite import GraphiteNotInstalled, LocalGraphite, whisper_value_at
from .metrics import MetricLayout, report_metrics
from .report import read_report
from .samples import DEFAULT_SCANNERS, generate

_SPARK = "▁▂▃▄▅▆▇█"


def _sparkline(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(_SPARK[min(7, int((v - lo) / span * 8))] for v in values)


def snr_graph_url(web_url: str) -> str:
    """graphite-web's PNG of every sample scanner's ``summary.snr_mean`` over 2025."""
    query = urllib.parse.urlencode({
        "target": "aliasByNode(hops.stability.*.*.summary.snr_mean, 2, 3)",
        "title": "Phantom SNR (mean over slices), sample scanners 2025",
        "from": "20250101", "until": "20260101", "width": 900, "height": 360, "format": "png",
        "lineMode": "connected", "lineWidth": 2, "bgcolor": "white", "fgcolor": "black",
        "majorGridLineColor": "#cccccc", "minorGridLineColor": "#eeeeee"})
    return f"{web_url}/render?{query}"


def _whisper_value(graphite: LocalGraphite, metric: str, timestamp: int) -> float | None:
    path = graphite.whisper_path(metric)
    try:
        return whisper_value_at(path, timestamp) if path.exists() else None
    except Exception:          # carbon is creating the file right now
        return None


def ingest_and_read_back(graphite: LocalGraphite, scanners_dir: Path, read_back_timeout: float = 60.0) -> int:
    """One ingest pass over ``scanners_dir/<scanner>/`` (the sample scanners) into
    ``graphite``, then every scan's ``summary.snr_mean`` read back from whisper and
    printed per series with a sparkline (waiting up to ``read_back_timeout`` seconds in
    all for carbon to write them).  0 when every report was delivered and read back, 1
    otherwise (what is missing is printed)."""
    sources = [ScannerSource(m.name, scanners_dir / m.name) for m in DEFAULT_SCANNERS]
    layout = MetricLayout()
    sender = GraphiteSender(GraphiteAddress.parse(graphite.line_address))
    started = time.monotonic()
    summary = Ingestor(sources, IngestSettings(layout), sender, trust_file_times=True).run_pass()
    print(f"ingest pass: {summary.line()} in {time.monotonic() - started:.1f} s")
    if summary.left_in_place:
        for r in summary.left_in_place:
            print("  ", r.describe())
        return 1
    print("\nRead back from whisper (summary.snr_mean per scan, oldest first):")
    not_found: list[str] = []
    by_coil: dict[str, list[float]] = {}
    deadline = time.monotonic() + read_back_timeout
    for source in sources:
        archived = sorted((source.directory / "ingested").iterdir())
        by_coil = {}
        for path in archived:
            metrics = report_metrics(read_report(path), source.name, layout)
            path_snr = layout.summary_path(source.name, metrics.report.channels, "snr_mean")
            value = _whisper_value(graphite, path_snr, metrics.timestamp)
            while value is None and time.monotonic() < deadline:   # carbon writes behind its confirmation
                time.sleep(0.1)
                value = _whisper_value(graphite, path_snr, metrics.timestamp)
            if value is None:
                not_found.append(f"{path_snr} at {metrics.timestamp} ({path.name})")
            else:
                by_coil.setdefault(path_snr, []).append(value)
        for metric, values in by_coil.items():
            print(f"  {metric}: {len(values)} scans, {min(values):.1f} .. {max(values):.1f}")
            print(f"    {_sparkline(values)}")
    if not_found or not by_coil:
        print(f"\nERROR: {len(not_found)} delivered scans were not found in whisper:")
        for line in not_found[:10]:
            print("  ", line)
        return 1
    return 0


def run_demo(directory: str | None = None, serve: bool = False, web: bool = True,
             png: str | None = None) -> int:
    base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="hops-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    scanners_dir = base / "scanners"
    if scanners_dir.exists():
        shutil.rmtree(scanners_dir)
    files = generate(scanners_dir)
    print(f"generated {len(files)} sample reports under {scanners_dir}")
    try:
        graphite = LocalGraphite(base / "graphite", web=web)
    except GraphiteNotInstalled as exc:
        print(f"cannot run the demo: {exc}")
        return 2
    with graphite:
        print(f"carbon-cache listening on {graphite.line_address}"
              + (f", graphite-web on {graphite.web_url}" if web else ""))
        if ingest_and_read_back(graphite, scanners_dir) != 0:
            return 1
        if web:
            url = snr_graph_url(graphite.web_url)
            print(f"\nGraph (graphite-web): {url}")
            print(f"Browse all metrics:   {graphite.web_url}/")
            if png:
                with urllib.request.urlopen(url, timeout=120) as resp:
                    Path(png).write_bytes(resp.read())
                print(f"Graph saved to {png}")
        if serve:
            print("\nGraphite keeps running; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    print(f"\ndemo files kept in {base}")
    return 0
