"""Routing send throughput of magickbox's storage SCU against dcmtk ``storescu``.

Both send the same generated study (the generator of ``bench_receive.py``) to the same
dcmtk ``storescp`` (plain, ``TCP_NODELAY=1``) over loopback in this run, one association
each, alternating, median of ``--rounds``.  The sender is what routing uses
(:func:`magickbox.results.send.send_files`); files go out in their own transfer syntax.

Prints images/s for both and the ratio magickbox / storescu.  **Target >= 0.5**
(a plain pynetdicom sender without TCP_NODELAY reaches about 0.03).  ``durable`` is the
same sender as a routing worker runs it: every acknowledged file appended to the send's
``.acks`` file and fsynced before the next one goes out; its ratio is printed too
(information: what durability per file costs).

    python benchmarks/bench_route.py [--images 500] [--size-kb 130] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_receive import generate_study, run_storescp, send, stop  # noqa: E402
from benchlib import emit, row  # noqa: E402

from magickbox.results.send import Destination, send_files  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size-kb", type=int, default=130)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run (50 images, 1 round)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds = 50, 1
    base = Path(tempfile.mkdtemp(prefix="hops-bench-route-"))
    try:
        files = generate_study(base / "study", args.images, args.size_kb)
        timings: dict[str, list[float]] = {"storescu": [], "magickbox": [], "durable": []}
        for r in range(args.rounds):
            for name in timings:
                target = base / f"{name}-{r}"
                proc, port = run_storescp(target)
                try:
                    if name == "storescu":
                        timings[name].append(send(port, "PACS", files))
                    else:
                        acks = open(base / f"send-{r}.acks", "a") if name == "durable" else None

                        def record(result, acks=acks):
                            if acks is not None and result.ok:
                                acks.write(f"{result.sop_instance_uid} {result.status}\n")
                                acks.flush()
                                os.fdatasync(acks.fileno())
                        started = time.perf_counter()
                        report = send_files(files, Destination("127.0.0.1", port, "PACS", "BENCH"), on_result=record)
                        timings[name].append(time.perf_counter() - started)
                        if acks is not None:
                            acks.close()
                        if not report.ok or len(report.sent) != len(files):
                            raise SystemExit(f"magickbox send failed: {report.summary()}")
                finally:
                    stop(proc)
                received = sum(1 for _ in target.iterdir())
                if received != len(files):
                    raise SystemExit(f"{name}: storescp stored {received} of {len(files)} files")
                shutil.rmtree(target, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in timings.items()}
        rate = {k: args.images / v for k, v in med.items()}
        print(f"study: {args.images} MR images of {args.size_kb} KB to dcmtk storescp, one association, "
              f"median of {args.rounds}")
        for k in timings:
            print(f"  {k:<10} {rate[k]:7.0f} img/s  ({med[k]:.2f} s)")
        ratio = rate["magickbox"] / rate["storescu"]
        print(f"ratio magickbox send / dcmtk storescu: {ratio:.2f}x  (target >= 0.5)"
              + ("  OK" if ratio >= 0.5 else "  BELOW TARGET"))
        print(f"ratio durable routing send (ack fsynced per file) / dcmtk storescu: "
              f"{rate['durable'] / rate['storescu']:.2f}x")
        emit("bench_route", [row(f"send {args.images} img of {args.size_kb} KB to storescp, median of {args.rounds}",
                                 round(rate["magickbox"]), "img/s", f"dcmtk storescu {rate['storescu']:.0f} img/s",
                                 ratio, ">= 0.5x", ratio >= 0.5)], quick=args.quick)
        return 0 if ratio >= 0.5 else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
