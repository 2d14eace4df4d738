"""DICOM receive throughput of ``magickbox serve`` against dcmtk ``storescp``.

Both receive the same generated study from dcmtk ``storescu`` over loopback in this run
(``TCP_NODELAY=1`` for dcmtk).  magickbox runs with its defaults: every instance written
to a temporary file, fsync'd, renamed and the directory fsync'd before the ack.

Prints images/s for each receiver and two ratios:

* magickbox / storescp made durable too (fsync of each file and its directory, by
  ``benchmarks/fsync_preload.c`` preloaded into storescp): durable against durable, the
  fair comparison.  **Target >= 0.5.**
* magickbox / plain storescp (which acknowledges instances that are only in the page
  cache), for information.

and what receiving one 200 MB instance adds to the idle node's peak RSS (target < 50 MB:
large data sets are spooled to disk; the idle node itself is ~90 MB with the web UI/API).

    python benchmarks/bench_receive.py [--images 500] [--size-kb 130] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from benchlib import emit, row  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from magickbox.layout import DataLayout  # noqa: E402
from stability_collector.localgraphite import free_port, wait_for_port  # noqa: E402

MAGICKBOX = shutil.which("magickbox", path=os.path.dirname(sys.executable)) or "magickbox"
ENV = dict(os.environ, TCP_NODELAY="1")


def generate_study(directory: Path, images: int, size_kb: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    if (0xFFFC, 0xFFFC) in base:
        del base[0xFFFCFFFC]
    side = int((size_kb * 1024 / 2) ** 0.5)
    base.Rows = base.Columns = side
    base.PixelData = os.urandom(side * side * 2)
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(images):
        ds = base.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        path = directory / f"img{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def send(port: int, called: str, files: list[Path]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"storescu failed: {proc.stderr[-2000:]}")
    return elapsed


def build_fsync_shim(directory: Path) -> Path:
    """Compile the LD_PRELOAD shim that makes storescp fsync like magickbox."""
    out = directory / "fsync_preload.so"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("a C compiler is needed for the durable storescp reference (apt install gcc)")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(Path(__file__).with_name("fsync_preload.c")),
                    "-ldl"], check=True)
    return out


def run_storescp(out: Path, shim: Path | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    args = ["storescp", "-aet", "PACS", "-od", str(out), "+B"]
    env = dict(ENV)
    if shim is not None:
        env.update(LD_PRELOAD=str(shim), FSYNC_PRELOAD_DIR=str(out))
    proc = subprocess.Popen([*args, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc, what="storescp")
    return proc, port


def run_magickbox(data: Path) -> tuple[subprocess.Popen, int]:
    bucket = DataLayout.of(data).buckets / "bench"
    bucket.mkdir(parents=True, exist_ok=True)
    (bucket / "info.json").write_text(
        '{"name": "bench", "description": "", "version": "1", "AETitle": "BENCH", "license": "", "enabled": 1}')
    port = free_port()
    proc = subprocess.Popen([MAGICKBOX, "serve", "--data-dir", str(data), "--dicom-port", str(port),
                             "--dicom-host", "127.0.0.1", "--http-port", "0", "--quiet-seconds", "3600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc, what="magickbox")
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process, MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size-kb", type=int, default=130)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="a smoke run (50 images, 1 round, a 20 MB instance)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds, args.big_mb = 50, 1, 20
    base = Path(tempfile.mkdtemp(prefix="hops-bench-"))
    try:
        shim = build_fsync_shim(base)
        files = generate_study(base / "study", args.images, args.size_kb)
        timings: dict[str, list[float]] = {"storescp": [], "storescp-durable": [], "magickbox": []}
        for r in range(args.rounds):
            for name in timings:
                target = base / f"{name}-{r}"
                if name == "magickbox":
                    proc, port = run_magickbox(target)
                    called = "BENCH"
                else:
                    proc, port = run_storescp(target, shim if name.endswith("durable") else None)
                    called = "PACS"
                try:
                    timings[name].append(send(port, called, files))
                finally:
                    stop(proc)
                shutil.rmtree(target, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in timings.items()}
        rate = {k: args.images / v for k, v in med.items()}
        print(f"study: {args.images} MR images of {args.size_kb} KB, one association, median of {args.rounds}")
        for k in timings:
            print(f"  {k:<17} {rate[k]:7.0f} img/s  ({med[k]:.2f} s)")
        ratio = rate["magickbox"] / rate["storescp-durable"]
        print(f"ratio magickbox / durable storescp:  {ratio:.2f}x  (both fsync file + directory; target >= 0.5)"
              + ("  OK" if ratio >= 0.5 else "  BELOW TARGET"))
        print(f"ratio magickbox / plain storescp:    {rate['magickbox'] / rate['storescp']:.2f}x  "
              "(storescp acknowledges before the data is on disk)")
        # memory while receiving one large instance
        big = generate_study(base / "big", 1, args.big_mb * 1024)
        proc, port = run_magickbox(base / "big-node")
        try:
            time.sleep(1)
            idle = rss_mb(proc.pid, "VmRSS")
            send(port, "BENCH", big)
            rss = rss_mb(proc.pid)
        finally:
            stop(proc)
        growth = rss - idle
        print(f"peak RSS receiving one {args.big_mb} MB instance: {rss:.0f} MB, {growth:.0f} MB over the idle node "
              f"(target: < 50 MB over idle, whatever the instance size)" + ("  OK" if growth < 50 else "  ABOVE TARGET"))
        label = f"{args.images} img of {args.size_kb} KB, one association, median of {args.rounds}"
        emit("bench_receive", [
            row(f"receive {label}", round(rate["magickbox"]), "img/s",
                f"durable storescp {rate['storescp-durable']:.0f} img/s", ratio, ">= 0.5x", ratio >= 0.5),
            row(f"receive {label}, vs plain storescp", round(rate["magickbox"]), "img/s",
                f"storescp {rate['storescp']:.0f} img/s (acks before disk)", rate["magickbox"] / rate["storescp"]),
            row(f"peak RSS receiving one {args.big_mb} MB instance, over the idle node", round(growth), "MB",
                f"idle node {idle:.0f} MB", None, "< 50 MB", growth < 50),
        ], quick=args.quick)
        return 0 if ratio >= 0.5 and growth < 50 else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
