"""Receive throughput with several concurrent associations: magickbox against dcmtk
``storescp --fork`` made durable the same way as in ``bench_receive.py`` (the
``fsync_preload.c`` shim: fsync of each file and its directory), same files, same run.

1, 2 and 4 dcmtk ``storescu`` senders (``TCP_NODELAY=1``) each send their own study of
``--images`` MR images of ``--size-kb`` KB at the same time; the time is from the first
start to the last exit, after a warm-up association per sender (2 images; the first
associations of a fresh process import and set up lazily).  Receivers:

* ``storescp-fork``   dcmtk storescp ``--fork`` (one process per association) + fsync shim
* ``magickbox-1``     ``magickbox serve`` with ``[dicom] receivers = 1`` (one process)
* ``magickbox-N``     ``[dicom] receivers = N`` (``--receivers``, default: the CPU count)

Prints images/s and the ratio magickbox-N / storescp-fork per sender count (**target
>= 0.8 with 4 senders**), medians of ``--rounds`` rounds, the rounds interleaved so that
both receivers see the same machine load; and the load average before and after.

    python benchmarks/bench_receive_scaling.py [--images 200] [--size-kb 130] [--rounds 3] [--receivers N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_receive import ENV, MAGICKBOX, build_fsync_shim, generate_study, stop  # noqa: E402
from benchlib import emit, row  # noqa: E402

from magickbox.layout import DataLayout  # noqa: E402
from stability_collector.localgraphite import free_port, wait_for_port  # noqa: E402


def send_concurrently(port: int, called: str, studies: list[list[Path]]) -> float:
    """Seconds from starting one storescu per study to the last one's exit."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port),
                               *map(str, files)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for files in studies]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    for proc, err in zip(procs, errors):
        if proc.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
    return elapsed


def run_storescp_fork(out: Path, shim: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(ENV, LD_PRELOAD=str(shim), FSYNC_PRELOAD_DIR=str(out))
    proc = subprocess.Popen(["storescp", "--fork", "-aet", "PACS", "-od", str(out), "+B", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc, what="storescp")
    return proc, port


def run_magickbox(data: Path, receivers: int) -> tuple[subprocess.Popen, int]:
    bucket = DataLayout.of(data).buckets / "bench"
    bucket.mkdir(parents=True, exist_ok=True)
    (bucket / "info.json").write_text(
        '{"name": "bench", "description": "", "version": "1", "AETitle": "BENCH", "license": "", "enabled": 1}')
    config = data.parent / f"{data.name}.toml"
    config.write_text(f"[dicom]\nreceivers = {receivers}\n")
    port = free_port()
    proc = subprocess.Popen([MAGICKBOX, "serve", "--config", str(config), "--data-dir", str(data),
                             "--dicom-port", str(port), "--dicom-host", "127.0.0.1", "--http-port", "0",
                             "--quiet-seconds", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc, what="magickbox", timeout=120)
    time.sleep(0.5)
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="images per sender")
    ap.add_argument("--size-kb", type=int, default=130)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--receivers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--senders", default="1,2,4")
    ap.add_argument("--quick", action="store_true", help="a smoke run (20 images, 1 round, 1 and 4 senders)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds, args.senders = 20, 1, "1,4"
    sender_counts = [int(s) for s in args.senders.split(",")]
    base = Path(tempfile.mkdtemp(prefix="hops-bench-scaling-"))
    load_before = os.getloadavg()
    try:
        shim = build_fsync_shim(base)
        studies = [generate_study(base / f"study{i}", args.images, args.size_kb) for i in range(max(sender_counts))]
        warmup = generate_study(base / "warmup", 2, args.size_kb)
        names = ["storescp-fork", "magickbox-1", f"magickbox-{args.receivers}"]
        timings: dict[tuple[str, int], list[float]] = {(n, k): [] for n in names for k in sender_counts}
        for r in range(args.rounds):
            for k in sender_counts:
                for name in names:
                    target = base / f"{name}-{k}-{r}"
                    if name == "storescp-fork":
                        proc, port = run_storescp_fork(target, shim)
                        called = "PACS"
                    else:
                        proc, port = run_magickbox(target, int(name.split("-")[1]))
                        called = "BENCH"
                    try:
                        send_concurrently(port, called, [warmup] * k)     # first associations: lazy set-up
                        timings[(name, k)].append(send_concurrently(port, called, studies[:k]))
                    finally:
                        stop(proc)
                    shutil.rmtree(target, ignore_errors=True)
        load_after = os.getloadavg()
        print(f"{args.images} MR images of {args.size_kb} KB per sender, concurrent associations, median of "
              f"{args.rounds} rounds; {os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, "
              f"after {load_after[0]:.2f}")
        ok = True
        rows = []
        for k in sender_counts:
            rate = {n: k * args.images / statistics.median(timings[(n, k)]) for n in names}
            ratio = rate[names[2]] / rate["storescp-fork"]
            ratio1 = rate["magickbox-1"] / rate["storescp-fork"]
            print(f"  {k} sender(s): " + ", ".join(f"{n} {rate[n]:5.0f} img/s" for n in names)
                  + f"  ->  {names[2]} / storescp-fork {ratio:.2f}x, magickbox-1 / storescp-fork {ratio1:.2f}x"
                  + ("" if k != 4 else ("  OK (target >= 0.8)" if ratio >= 0.8 else "  BELOW TARGET (>= 0.8)")))
            for name, value in ((names[1], ratio1), (names[2], ratio)):
                rows.append(row(f"{k} concurrent sender(s) x {args.images} img of {args.size_kb} KB, {name} "
                                f"(receiving processes), median of {args.rounds}", round(rate[name]), "img/s",
                                f"storescp --fork made durable {rate['storescp-fork']:.0f} img/s", value,
                                ">= 0.8x" if k == 4 else None, (value >= 0.8) if k == 4 else None))
            if k == 4:
                ok = max(ratio, ratio1) >= 0.8
        emit("bench_receive_scaling", rows, quick=args.quick)
        return 0 if ok else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
