"""What the benchmarks share: the machine-readable result line, percentiles, and the
peak memory of a process tree.

Every ``benchmarks/bench_*.py`` ends by calling :func:`emit`, which prints one line
``RESULT {json}`` (and writes the same JSON to the file named by ``$HOPS_BENCH_RESULT``
if set).  ``benchmarks/run`` collects these into ``benchmarks/RESULTS.md``.  A row::

    {"figure": "receive, 10 senders", "value": 812.0, "unit": "img/s",
     "reference": "durable storescp --fork: 1020 img/s", "ratio": 0.8,
     "target": ">= 0.5x", "met": true}

``reference``, ``ratio``, ``target`` and ``met`` are null where a figure has none.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["row", "emit", "percentile", "rss_mb", "reset_peak_rss", "TreeMemory"]


def row(figure: str, value: float, unit: str, reference: str | None = None, ratio: float | None = None,
        target: str | None = None, met: bool | None = None) -> dict[str, Any]:
    """One line of the results table (see the module docstring)."""
    return {"figure": figure, "value": value, "unit": unit, "reference": reference,
            "ratio": None if ratio is None else round(ratio, 3), "target": target, "met": met}


def emit(benchmark: str, rows: list[dict[str, Any]], **info: Any) -> None:
    """Print ``RESULT {json}`` (the last line of a benchmark's output) and write the JSON
    to ``$HOPS_BENCH_RESULT`` when it is set."""
    doc = {"benchmark": benchmark, "rows": rows, **info}
    text = json.dumps(doc, sort_keys=False)
    target = os.environ.get("HOPS_BENCH_RESULT")
    if target:
        Path(target).write_text(text + "\n")
    print("RESULT " + text, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """Peak (``VmHWM``) or current (``VmRSS``) resident memory of a live process, MB;
    NaN when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's ``VmHWM`` to its current RSS (``/proc/<pid>/clear_refs`` = 5);
    False where the kernel or permissions do not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


class TreeMemory:
    """Samples the summed ``VmRSS`` of processes and all their descendants every
    ``interval`` seconds in a thread; :attr:`peak_mb` is the highest sum seen (a sample,
    so short-lived children between samples are missed)."""

    def __init__(self, *pids: int, interval: float = 0.2):
        self.pids = list(pids)
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def sample(self) -> float:
        tree = _children()
        seen: set[int] = set()
        todo = list(self.pids)
        total = 0.0
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            rss = rss_mb(pid, "VmRSS")
            if rss == rss:                      # not NaN
                total += rss
            todo.extend(tree.get(pid, ()))
        self.peak_mb = max(self.peak_mb, total)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``predicate()`` until true; SystemExit naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
