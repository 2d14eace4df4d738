"""``magickbox qa``: the phantom QA bucket from the command line.

    magickbox qa phantom OUTDIR [--layout classic|mosaic|xa-mosaic|xa-classic|enhanced|xa-enhanced] [...]
    magickbox qa analyse INPUT OUTPUT [--memory DIR] [--config info.json]
    magickbox qa install --data-dir DIR [--ae-title ProcQA]
    magickbox qa bucket-dir

``phantom`` writes a synthetic phantom series with known truth (``--truth FILE`` saves the
analytic values as JSON) for tests, the demo and sites validating their set-up;
``analyse`` runs the bucket on a directory exactly as a job does; ``install`` installs the
shipped bucket into a node (recording this Python for its work.sh); ``bucket-dir`` prints
where the shipped bucket directory is (for ``magickbox buckets install``).
This module only imports argparse at start; numpy and friends load when a command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

__all__ = ["add_qa_parser", "qa_main", "BUCKET_DIR"]

BUCKET_DIR = Path(__file__).resolve().parent / "procqa"


def add_qa_parser(sub: argparse._SubParsersAction) -> None:
    from .spec import LAYOUTS, PhantomSpec
    p = sub.add_parser("qa", help="phantom QA: synthetic phantom series, the fBIRN bucket")
    qsub = p.add_subparsers(dest="qa_command", metavar="ACTION", required=True)
    g = qsub.add_parser("phantom", help="write a synthetic fMRI phantom series with known truth as DICOM")
    g.add_argument("outdir", metavar="OUTDIR")
    g.add_argument("--layout", choices=LAYOUTS, default="classic")
    d = PhantomSpec()
    for name, kind, help_text in (
            ("matrix", int, "pixels (square)"), ("slices", int, ""), ("volumes", int, "including dummy volumes"),
            ("tr", float, "seconds"), ("signal", float, "cylinder signal S0"),
            ("noise", float, "white noise sigma per channel"),
            ("fluctuation", float, "spatially uniform temporal fluctuation (signal units)"),
            ("drift-linear", float, "percent of S0 over the run"),
            ("drift-quadratic", float, "percent of S0 over the run"), ("ghost", float, "percent N/2 ghost"),
            ("dummy-volumes", int, "brighter volumes at the start (skipped by the analysis)"),
            ("roi-size", int, "the analysis ROI the exact noise is built for"), ("seed", int, ""),
            ("station-name", str, "StationName"), ("device-serial", str, "DeviceSerialNumber"),
            ("coil", str, "receive coil name"), ("start", str, "acquisition start, ISO 8601 local time"),
            ("phase-encoding", str, "COL or ROW")):
        g.add_argument(f"--{name}", type=kind, default=None,
                       help=f"{help_text} (default {getattr(d, name.replace('-', '_'))})".strip())
    g.add_argument("--random-noise", action="store_true",
                   help="plain i.i.d. noise instead of moment-matched noise on the ROI")
    g.add_argument("--truth", metavar="FILE", help="write the analytic values as JSON")
    a = qsub.add_parser("analyse", help="run the QA bucket on INPUT into OUTPUT (as a job does)")
    a.add_argument("input", metavar="INPUT")
    a.add_argument("output", metavar="OUTPUT")
    a.add_argument("--memory", metavar="DIR", help="the bucket's persistent memory directory")
    a.add_argument("--config", metavar="FILE", help="info.json with a \"qa\" object")
    i = qsub.add_parser("install", help="install the shipped ProcQA bucket into a node")
    from ..cli import data_options
    data_options(i, "node data root (buckets in DIR/buckets unless configured)", default=".")
    i.add_argument("--buckets-dir", metavar="DIR", help="buckets directory (overrides the configuration)")
    i.add_argument("--ae-title", metavar="AE", help="AE title (default ProcQA)")
    qsub.add_parser("bucket-dir", help="print the shipped bucket directory")


def _phantom(args: argparse.Namespace) -> int:
    from .phantom import generate, spec_from_options, write_series
    options = {k: getattr(args, k) for k in ("matrix", "slices", "volumes", "tr", "signal", "noise", "fluctuation",
                                             "drift_linear", "drift_quadratic", "ghost", "dummy_volumes", "roi_size",
                                             "seed", "station_name", "device_serial", "coil", "start",
                                             "phase_encoding")}
    if args.random_noise:
        options["exact"] = False
    try:
        spec = spec_from_options(**options)
        phantom = generate(spec)
    except ValueError as exc:
        print(f"magickbox qa phantom: {exc}", file=sys.stderr)
        return 2
    files = write_series(phantom, Path(args.outdir), args.layout)
    t = phantom.truth
    print(f"wrote {len(files)} file(s) ({args.layout}) to {args.outdir}: {spec.volumes} volumes x {spec.slices} "
          f"slices x {spec.matrix}x{spec.matrix}")
    print(f"truth (ROI {spec.roi_size}x{spec.roi_size}, {spec.dummy_volumes} volumes skipped): SNR {t['snr']:.2f}, "
          f"SFNR {t['sfnr']:.2f}, fluctuation {t['fluctuation_pct']:.4f} %, drift {t['drift_pct']:.3f} %, "
          f"RDC {t['rdc']:.3f}, ghost {t['ghost_pct']:.3f} % (nominal {t['ghost_fraction_pct']:g} %)")
    if args.truth:
        Path(args.truth).write_text(json.dumps({"layout": args.layout, "spec": dataclasses.asdict(spec), "truth": t},
                                               indent=1, default=str) + "\n")
    return 0


def _install(args: argparse.Namespace) -> int:
    from ..bucketadmin import install_bucket
    from ..buckets import load_bucket_info
    from ..cli import layout_from_args
    root = layout_from_args(args).buckets
    root.mkdir(parents=True, exist_ok=True)
    bucket = install_bucket(root, str(BUCKET_DIR))
    work = bucket.directory / "work.sh"
    work.chmod(0o755)
    (bucket.directory / "python.path").write_text(sys.executable + "\n")
    if args.ae_title:
        info = json.loads(bucket.info_path.read_text())
        info["AETitle"] = args.ae_title
        bucket.info_path.write_text(json.dumps(info, indent=2) + "\n")
        bucket = load_bucket_info(bucket.directory)
    print(f"installed the QA bucket in {bucket.directory} (AE title {bucket.ae_title}, process runner, "
          f"Python {sys.executable}); its settings are the \"qa\" object of {bucket.info_path}")
    return 0


def qa_main(args: argparse.Namespace) -> int:
    if args.qa_command == "phantom":
        return _phantom(args)
    if args.qa_command == "analyse":
        from .bucket import main
        argv = [args.input, args.output] + ([args.memory] if args.memory else [])
        argv += ["--config", args.config] if args.config else []
        return main(argv)
    if args.qa_command == "install":
        return _install(args)
    print(BUCKET_DIR)
    return 0
