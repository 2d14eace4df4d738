"""fBIRN phantom QA: analysis time beside the time pydicom alone takes to read the files.

For a synthetic 200-volume 64x64x35 phantom series in each layout (generated first, not
timed), measured in the same run on the same files, CPU seconds of this process (the
machine is shared; BLAS single-threaded as in the bucket):

* **read** — pydicom alone: ``dcmread`` + ``pixel_array`` of every file;
* **load** — the QA loader (read, skip rules, slice/time sorting, 4-D assembly);
* **metrics** — ``fbirn.analyse`` (every metric, per slice, Weisskoff, ghost, centre of mass)
  and measures.json;
* **on top** = load + metrics − read: everything a QA job adds to reading the pixels;
* **report** — figures, PDF/PNG/HTML page and the Secondary Capture (matplotlib), shown
  separately (a fixed cost of about a second, independent of the series size).

Target: on top ≤ 1× read (the whole job costs at most twice the read).  Prints one line
per layout with the ratios (the fastest of ``--repeat`` runs of each, which is the least
disturbed by other work on a shared machine).

    python benchmarks/bench_qa.py [--layouts classic,mosaic,enhanced] [--volumes 200] [--slices 35] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from benchlib import emit, row  # noqa: E402

from magickbox.qa.fbirn import FbirnSettings, analyse  # noqa: E402
from magickbox.qa.loader import load_series  # noqa: E402
from magickbox.qa.measures import build_measures  # noqa: E402
from magickbox.qa.phantom import LAYOUTS, PhantomSpec, generate, write_series  # noqa: E402

TARGET = 1.0


def cpu(fn):
    start = time.process_time()
    value = fn()
    return time.process_time() - start, value


def read_all(files: list[Path]) -> int:
    total = 0
    for f in files:
        ds = pydicom.dcmread(f)
        total += ds.pixel_array.size
    return total


def job(directory: Path):
    series = load_series(directory)
    return series


def metrics(series):
    result = analyse(series.data, series.spacing_mm, FbirnSettings(phase_encoding=series.phase_encoding))
    return build_measures(result, series.acquisition_time.isoformat(), "hops.stability.bench.coil.fbirn"), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="classic,mosaic,enhanced",
                    help=f"comma-separated, from {', '.join(LAYOUTS)} (or 'all')")
    ap.add_argument("--volumes", type=int, default=200)
    ap.add_argument("--slices", type=int, default=35)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-report", action="store_true", help="skip timing the figures/report")
    ap.add_argument("--quick", action="store_true", help="a smoke run (classic, 40 volumes of 10 slices, once, "
                                                         "no report)")
    args = ap.parse_args()
    if args.quick:
        args.layouts, args.volumes, args.slices, args.repeat, args.no_report = "classic", 40, 10, 1, True
    rows = []
    layouts = list(LAYOUTS) if args.layouts == "all" else [s.strip() for s in args.layouts.split(",") if s.strip()]
    spec = PhantomSpec(volumes=args.volumes, slices=args.slices)
    print(f"generating a {spec.volumes}-volume {spec.matrix}x{spec.matrix}x{spec.slices} phantom ...", flush=True)
    phantom = generate(spec)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="hops-bench-qa-") as tmp:
        for layout in layouts:
            directory = Path(tmp) / layout
            files = write_series(phantom, directory, layout)
            read_all(files)                                   # page cache warm for both
            reads, loads, mets = [], [], []
            for _ in range(args.repeat):
                t, _ = cpu(lambda: read_all(files))
                reads.append(t)
                t, series = cpu(lambda: job(directory))
                loads.append(t)
                t, (doc, result) = cpu(lambda: metrics(series))
                mets.append(t)
            read, load, met = (min(x) for x in (reads, loads, mets))
            on_top = load + met - read
            worst = max(worst, on_top / read)
            report = ""
            if not args.no_report:
                from magickbox.qa.report import write_figures, write_report, write_secondary_capture
                out = Path(tmp) / f"{layout}-out"
                out.mkdir()

                def render():
                    write_figures(result, out, series.tr_seconds)
                    pages = write_report(result, {"scanner": "bench", "coil": "coil", "layout": layout},
                                         out, series.tr_seconds)
                    write_secondary_capture(pages[1], series.header, out / "report_sc.dcm")
                render()                                       # font cache, imports
                t, _ = cpu(render)
                report = f", report {t:.2f} s"
            print(f"{layout:12s} {len(files):5d} files: read {read:6.3f} s, load {load:6.3f} s, metrics {met:6.3f} s "
                  f"-> metrics/read {met / read:5.2f}x, on top of the read {on_top / read:5.2f}x "
                  f"(whole job {(load + met) / read:4.2f}x read){report}", flush=True)
            rows.append(row(f"fBIRN QA {layout}, {spec.volumes}x{spec.slices} slices: on top of the read",
                            round(load + met - read, 3), "s CPU", f"pydicom read {read:.3f} s", on_top / read,
                            "<= 1x read", on_top / read <= TARGET))
    verdict = "meets" if worst <= TARGET else "misses"
    print(f"worst 'on top of the read' ratio {worst:.2f}x: {verdict} the target of <= {TARGET:g}x")
    emit("bench_qa", rows, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
