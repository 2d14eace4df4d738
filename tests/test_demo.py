"""The full tour (``deploy/local/demo.sh`` = ``python -m magickbox.demo``).

.ci/run runs the whole tour from a fresh clone; here: Ctrl-C in the middle of it stops
every process it started and frees every port, and the helpers that judge the pending
steps (routing, measures) against the job record.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from magickbox.demo import measures_delivered, routing_delivered, routing_rules
from magickbox.results.routing import load_rules


def _session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, state) of every live process in session ``sid`` (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            members.append((int(entry.name), fields[0]))
    return members


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("stop_at", ["[3] samples", "[5] job"])
def test_ctrl_c_to_the_process_group_mid_tour_stops_everything(tmp_path, stop_at):
    proc = subprocess.Popen([sys.executable, "-m", "magickbox.demo", "--dir", str(tmp_path / "demo"), "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    reached = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(stop_at):
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(120), "".join(lines)[-3000:]
        text = "".join(lines)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
        assert len(set(ports)) >= 5, text            # carbon, graphite-web, 2 x (DICOM + HTTP)
        members = _session_members(proc.pid)
        assert len(members) >= 5, members            # the tour, 2 nodes, carbon, gunicorn (+ workers)
        assert all(_listening(p) for p in set(ports)), text
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130, "".join(lines)[-3000:]
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [m for m in _session_members(proc.pid) if m[1] != "Z"]:
        time.sleep(0.2)
    left = [(pid, state, _cmdline(pid)) for pid, state in _session_members(proc.pid) if state != "Z"]
    assert not left, f"processes left running after Ctrl-C: {left}\n{''.join(lines)[-2000:]}"
    assert not [p for p in set(ports) if _listening(p)], f"ports still open after Ctrl-C: {''.join(lines)[-2000:]}"
    assert "interrupted: stopping everything the tour started" in "".join(lines)


def test_routing_rules_are_valid_magickbox_routing(tmp_path):
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(routing_rules(11113)))
    (rule,) = load_rules(path).rules
    (target,) = rule.targets
    assert (rule.called_pattern, target.port, target.called_ae) == ("ProcQA", "11113", "QAREPORTS")
    assert target.matches("success") and target.matches("partial") and not target.matches("failed")


@pytest.mark.parametrize("record, done", [
    ([], False),
    (None, False),
    ([{"destination": "QAREPORTS@127.0.0.1:104", "state": "sent", "files": 1}], True),
    ([{"destination": "A", "state": "sent"}, {"destination": "B", "state": "skipped"}], True),
    ([{"destination": "A", "state": "failed"}, {"destination": "B", "state": "sent"}], False),
    ([{"destination": "A", "state": "pending", "attempts": 2}], False),
    ([{"destination": "A", "state": "skipped"}], False),
])
def test_routing_delivered(record, done):
    assert routing_delivered(record)[0] is done


@pytest.mark.parametrize("record, done", [
    ([], False),
    ([{"path": "hops.measures.b.s.x", "delivered": True}], True),
    ([{"path": "hops.measures.b.s.x", "delivered": True}, {"path": "hops.measures.b.s.y", "delivered": False}], False),
])
def test_measures_delivered(record, done):
    assert measures_delivered(record)[0] is done
