"""Per-job overhead of magickbox on podman, for a no-op bucket.

For each of N single-instance studies sent with dcmtk: *start overhead* = study complete
(job created) -> container started, and *commit overhead* = container exited -> job
committed in the job store.  Uses a real gearmand (sqlite queue) when installed, the
embedded job server otherwise, and a private podman API service.  Target: start +
commit <= 1 s (MagickBox polled every 10 s; the XNAT/OpenStack setup in the seeds spent
4 minutes booting a VM for a 30-second job).

    python benchmarks/bench_jobs.py [--jobs 10]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # the podman launcher of the tests

from bench_receive import MAGICKBOX, generate_study, send, stop  # noqa: E402
from benchlib import emit, row  # noqa: E402
from localpodman import Podman  # noqa: E402

from magickbox.layout import DataLayout  # noqa: E402
from stability_collector.localgraphite import free_port, wait_for_port  # noqa: E402

NOOP = ["/bin/sh", "-c", "echo '[{\"success\": \"success\"}]' > /output/proc.json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="a smoke run (2 jobs)")
    args = ap.parse_args()
    if args.quick:
        args.jobs = 2
    base = Path(tempfile.mkdtemp(prefix="hops-bench-jobs-"))
    podman = Podman(base / "podman").start()
    gearmand = None
    try:
        image = podman.build_busybox_image()
        data = base / "node"
        bucket = DataLayout.of(data).buckets / "noop"
        bucket.mkdir(parents=True)
        (bucket / "info.json").write_text(json.dumps({
            "name": "noop", "description": "", "version": "1", "AETitle": "NOOP", "license": "", "enabled": 1,
            "run": {"runner": "container", "image": image, "command": NOOP, "timeout": 60}}))
        config = f'[worker]\nengine = "{podman.url}"\n'
        if shutil.which("gearmand"):
            gport = free_port()
            gearmand = subprocess.Popen(["gearmand", "--listen=127.0.0.1", f"--port={gport}", "-q", "libsqlite3",
                                         f"--libsqlite3-db={base / 'queue.sqlite'}", "--threads=2"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(gport, proc=gearmand, what="gearmand")
            config += f'[gearman]\nservers = ["127.0.0.1:{gport}"]\n'
        (base / "node.toml").write_text(config)
        from magickbox.api.tokens import TokenStore
        auth = {"Authorization": f"Bearer {TokenStore(DataLayout.of(data).api_tokens).create('bench', 'read')}"}
        dport, hport = free_port(), free_port()
        node = subprocess.Popen([MAGICKBOX, "serve", "--data-dir", str(data), "--config", str(base / "node.toml"),
                                 "--dicom-port", str(dport), "--dicom-host", "127.0.0.1", "--http-port", str(hport),
                                 "--quiet-seconds", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(dport, proc=node, what="magickbox")
        wait_for_port(hport, proc=node, what="magickbox http")
        try:
            for i in range(args.jobs):
                send(dport, "NOOP", generate_study(base / f"s{i}", 1, 10))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{hport}/api/jobs",
                                                                       headers=auth)) as resp:
                        jobs = json.load(resp)
                    if len(jobs) == i + 1 and jobs[0]["status"] not in ("queued", "running"):
                        break
                    time.sleep(0.05)
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{hport}/api/jobs",
                                                               headers=auth)) as resp:
                jobs = json.load(resp)
        finally:
            stop(node)
        bad = [j for j in jobs if j["status"] != "success"]
        if bad:
            raise SystemExit(f"jobs failed: {bad}")
        start = [j["started"] - j["completed"] for j in jobs]
        commit = [j["committed"] - j["finished"] for j in jobs]
        run = [j["finished"] - j["started"] for j in jobs]
        total = statistics.median(start) + statistics.median(commit)
        print(f"{len(jobs)} no-op jobs on podman via {'gearmand' if gearmand else 'the embedded job server'}")
        print(f"  study complete -> container started: median {statistics.median(start):.3f} s  "
              f"(max {max(start):.3f})")
        print(f"  container run (no-op):               median {statistics.median(run):.3f} s")
        print(f"  container exit -> job committed:     median {statistics.median(commit):.3f} s  "
              f"(max {max(commit):.3f})")
        print(f"  per-job overhead:                    {total:.3f} s  (target <= 1 s; "
              f"ratio to MagickBox's 10 s poll: {10 / total:.0f}x faster)" + ("  OK" if total <= 1 else "  ABOVE TARGET"))
        label = f"{len(jobs)} no-op jobs on podman"
        emit("bench_jobs", [
            row(f"{label}: per-job overhead (start + commit, medians)", round(total, 3), "s",
                "MagickBox polled every 10 s", total / 10, "<= 1 s", total <= 1),
            row(f"{label}: study complete -> container started, median", round(statistics.median(start), 3), "s"),
            row(f"{label}: container exit -> job committed, median", round(statistics.median(commit), 3), "s"),
            row(f"{label}: container run (no-op), median", round(statistics.median(run), 3), "s"),
        ], quick=args.quick)
        return 0 if total <= 1 else 1
    finally:
        if gearmand:
            gearmand.terminate()
            gearmand.wait(10)
        podman.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
