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
def forgetful_carbon():
    """The port of a plaintext listener that reads every line and confirms it (closes the
    connection cleanly) but writes nothing: what a carbon-cache killed after reading a
    batch and before writing it looks like to a sender."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            while conn.recv(65536):
                pass
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


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


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    """A podman API service with a busybox image (``containers.IMAGE``)."""
    from localpodman import Podman
    service = Podman(tmp_path_factory.mktemp("podman")).start()
    service.build_busybox_image()
    yield service
    service.stop()


class Gearmand:
    """gearmand with a persistent sqlite queue on a free loopback port."""

    def __init__(self, base: Path):
        from stability_collector.localgraphite import free_port
        self.base = base
        self.port = free_port()
        self.db = base / "queue.sqlite"
        self.proc = None
        base.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Gearmand":
        import subprocess

        from stability_collector.localgraphite import wait_for_port
        assert shutil.which("gearmand"), "gearmand is not installed (deploy/local/install-deps.sh)"
        self.proc = subprocess.Popen(
            ["gearmand", "--listen=127.0.0.1", f"--port={self.port}", "-q", "libsqlite3",
             f"--libsqlite3-db={self.db}", f"--log-file={self.base / 'gearmand.log'}", "--verbose=INFO",
             "--threads=2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc, what="gearmand")
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def status(self) -> dict[str, tuple[int, int, int]]:
        """function -> (total, running, available workers), via gearadmin."""
        import subprocess
        out = subprocess.run(["gearadmin", "-h", "127.0.0.1", "-p", str(self.port), "--status"],
                             capture_output=True, text=True, timeout=30).stdout
        result = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                result[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
        return result


@pytest.fixture
def gearmand(tmp_path):
    server = Gearmand(tmp_path / "gearmand").start()
    yield server
    server.stop()
