"""Parse + format throughput of stability reports on one core.

Prints reports per second for parse (bytes -> StabilityReport) + metrics (names, scan
time, summaries) + Graphite plaintext formatting, the ratio to the 2,000 reports/s
target, and the ratio to a reference measured in the same run on the same bytes: the
bare tokenisation every parser has to do (decode, split lines, split fields, float()).

    python benchmarks/bench_parse.py [--seconds 3]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import emit, row  # noqa: E402

from stability_collector.metrics import MetricLayout, report_metrics  # noqa: E402
from stability_collector.report import parse_report  # noqa: E402
from stability_collector.samples import render_report  # noqa: E402

TARGET = 2000.0


def corpus(n: int = 64) -> list[tuple[bytes, str]]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        text = render_report(16, 500, 32 if i % 2 else 48, 500.0, 250.0, -0.003, 2.5, rng)
        out.append((text.encode(), f"/share/bay/Stability_2025{(i % 12) + 1:02d}01T0{i % 10}0000.txt"))
    return out


def parse_and_format(items, layout):
    total = 0
    for data, name in items:
        total += len(report_metrics(parse_report(data, name), "bay", layout).graphite_lines())
    return total


def tokenise_only(items, _layout):
    total = 0
    for data, _name in items:
        for line in data.decode("ascii").split("\n"):
            fields = line.split()
            if fields and fields[0].isdigit():
                total += len([float(f) for f in fields[1:]])
    return total


def rate(fn, items, layout, seconds: float) -> float:
    fn(items, layout)                       # warm caches
    count = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        fn(items, layout)
        count += len(items)
    return count / (time.process_time() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="a smoke run (0.3 s each)")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 0.3
    items = corpus()
    layout = MetricLayout()
    ours = rate(parse_and_format, items, layout, args.seconds)
    ref = rate(tokenise_only, items, layout, args.seconds)
    print(f"parse+format:        {ours:8.0f} reports/s (16 slices, 457 datapoints each, one core CPU time)")
    print(f"reference tokenise:  {ref:8.0f} reports/s (decode + split + float only)")
    print(f"ratio to reference:  {ours / ref:8.2f}x")
    print(f"ratio to target:     {ours / TARGET:8.2f}x  (target {TARGET:.0f} reports/s) "
          + ("OK" if ours >= TARGET else "BELOW TARGET"))
    emit("bench_parse", [row("parse + format, one core", round(ours), "reports/s",
                             f"tokenise only {ref:.0f} reports/s", ours / ref, f">= {TARGET:.0f} reports/s",
                             ours >= TARGET)], quick=args.quick)
    return 0 if ours >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
