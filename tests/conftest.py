"""Shared fixtures: real servers on free loopback ports, stopped by PID.

A real-component test never skips: if carbon-cache / graphite-web is missing the
fixture fails with the install hint (``deploy/local/install-deps.sh``).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from stability_collector.localgraphite import LocalGraphite, whisper_value_at

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("HOPS_REFERENCE", REPO.parent / "shared" / "reference" / "hops"))
TRUNCATED = "Stability_19700124T092731.txt"


def reference_reports() -> list[Path]:
    files = sorted(REFERENCE.glob("Stability_*.txt"))
    assert files, f"reference reports not found in {REFERENCE} (set HOPS_REFERENCE)"
    return files


def good_reference_reports() -> list[Path]:
    return [p for p in reference_reports() if p.name != TRUNCATED]


@pytest.fixture(scope="session")
def graphite(tmp_path_factory):
    """A carbon-cache + graphite-web shared by the session (tests use distinct scanners)."""
    with LocalGraphite(tmp_path_factory.mktemp("graphite"), web=True) as g:
        yield g


@pytest.fixture
def own_carbon(tmp_path):
    """A carbon-cache private to one test (for stopping and restarting it)."""
    g = LocalGraphite(tmp_path / "graphite")
    g.start()
    yield g
    g.stop()


@pytest.fixture
def scanner_name(request) -> str:
    """A scanner name unique to the test, so tests can share one carbon."""
    name = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    return f"t{abs(hash(request.node.nodeid)) % 10**8}_{name}"[:60]


def copy_reports(files, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        shutil.copy2(f, directory / f.name)
        out.append(directory / f.name)
    return out


def wait_for_values(graphite: LocalGraphite, expected: dict[str, float], timestamp: int,
                    timeout: float = 30.0) -> dict[str, float | None]:
    """Poll whisper until every metric holds its expected value at ``timestamp``; returns
    the values found (the caller asserts on them)."""
    deadline = time.monotonic() + timeout
    found: dict[str, float | None] = {}
    pending = dict(expected)
    while pending and time.monotonic() < deadline:
        for metric, want in list(pending.items()):
            path = graphite.whisper_path(metric)
            try:
                value = whisper_value_at(path, timestamp) if path.exists() else None
            except Exception:  # file being created by carbon right now
                value = None
            found[metric] = value
            if value == want:
                del pending[metric]
        if pending:
            time.sleep(0.1)
    return found
