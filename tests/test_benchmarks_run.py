"""``benchmarks/run --quick`` runs every benchmark (smoke sizes) against the real
components and writes one markdown table with a row per benchmark and the machine it ran on."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_one_table_with_every_benchmark(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run"), "--quick", "--output", str(output),
                           "--timeout", "300"],
                          cwd=ROOT, capture_output=True, text=True, timeout=540,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert output.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    text = output.read_text()
    # the machine the numbers come from
    assert re.search(r"^- machine: \d+ CPUs", text, re.M)
    assert re.search(r"^- load average \(1, 5, 15 min\) at start: [\d.]+ [\d.]+ [\d.]+; at end: [\d.]+", text, re.M)
    assert re.search(r"^- git commit: [0-9a-f]{12}", text, re.M)
    header = "| benchmark | figure | value | unit | reference (same run) | ratio | target | met? |"
    assert header in text
    rows = [line for line in text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[1:] if line.startswith("| ")]
    benchmarks = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    assert "bench_load" in benchmarks
    for name in benchmarks:
        mine = [r for r in rows if r.startswith(f"| {name} |")]
        assert mine, f"no row for {name}:\n{text}\n{proc.stdout[-3000:]}"
        broken = [r for r in mine if "| runs | **NO** |" in r]
        assert not broken, f"{name} did not produce its figures: {broken}\n{proc.stdout[-4000:]}"
        # every row carries a number measured in this run
        for r in mine:
            value = r.split(" | ")[2]
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?(e[-+]?\d+)?|n/a", value), r
    load = [r for r in rows if r.startswith("| bench_load |")]
    for figure in ("throughput", "association duration p95", "per-image latency p95", "node peak RSS",
                   "queue-to-start latency p95", "worker peak RSS", "latency p99", "errors"):
        assert any(figure in r for r in load), f"bench_load has no {figure!r} row:\n" + "\n".join(load)
    # correctness checks of the load benchmark hold even at smoke sizes
    for check in ("instances archived exactly once", "studies with exactly one successful job",
                  "jobs succeeded, one per study", "errors (reads"):
        assert any(check in r and r.endswith("| yes |") for r in load), f"{check} failed:\n" + "\n".join(load)
