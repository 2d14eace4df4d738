"""``hops-stability``: parse, ingest, watch and replay MGH stability reports.

Exit codes: 0 success; 1 something was left undelivered (Graphite down, a file still
settling, a scan time in the future, an archive move failed) or a report did not parse
(``parse``); 2 bad usage or configuration (including a carbon storage schema that would lose
data); 3 (``ingest``) everything was handled but some reports were quarantined.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import StabilityConfig, build_config, load_config_file
from .core.errors import ConfigError
from .core.graphite import GraphiteSender
from .ingest import MIN_AGE_SECONDS, Ingestor, Outcome, PassSummary, future_scan_message
from .metrics import LAYOUTS, report_metrics, resolve_timezone
from .report import ReportParseError, read_report

EXIT_OK, EXIT_LEFT, EXIT_USAGE, EXIT_QUARANTINED = 0, 1, 2, 3


def _layout_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metric naming (defaults: see 'hops-stability --help')")
    g.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    g.add_argument("--layout", choices=sorted(LAYOUTS), help="named layout: 'hops' (default) or "
                   "'upstream' (paths of the original HOPS Diamond collector)")
    g.add_argument("--prefix", help="metric prefix (default: hops.stability)")
    g.add_argument("--metric-template", dest="metric_template", help="path template for table values")
    g.add_argument("--summary-template", dest="summary_template", help="path template for summaries")
    g.add_argument("--coil-map", dest="coil_map", metavar="C=NAME,...",
                   help="coil names by channel count (default '<C>ch', e.g. 32ch)")
    g.add_argument("--site", help="site path for the 'upstream' layout (default <prefix>.<scanner>)")
    g.add_argument("--timezone", help="IANA time zone of the scan times (default: this host's zone)")
    g.add_argument("--storage-schemas", dest="storage_schemas", metavar="FILE",
                   help="carbon's storage-schemas.conf: refuse to start if it would lose phantom data "
                        "(see 'hops-stability schema')")


def _ingest_args(p: argparse.ArgumentParser, dirs: bool = True) -> None:
    if dirs:
        p.add_argument("dirs", nargs="*", metavar="DIR",
                       help="scanner directory, or NAME=DIR (default name: the directory's basename); "
                            "default: the [scanners] of the config file")
    p.add_argument("--graphite", metavar="HOST:PORT", help="carbon plaintext receiver")
    p.add_argument("--archive-subdir", dest="archive_subdir", help="default: ingested")
    p.add_argument("--failed-subdir", dest="failed_subdir", help="default: failed")
    p.add_argument("--settle-seconds", dest="settle_seconds", type=float,
                   help="a report that does not parse is quarantined only after it has not changed "
                        "for this long (default 30)")
    p.add_argument("--timeout", type=float, help="seconds to wait for Graphite's confirmation (default 15)")


def _verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify-whisper", dest="verify_whisper_dir", metavar="DIR",
                   help="carbon's whisper directory (carbon on this host): archive a report only after its "
                        "datapoints are read back from there (waits up to --timeout)")


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hops-stability",
        description="Send MGH Stability phantom reports to Graphite, time-stamped with the scan time. "
                    "Default metric path: hops.stability.<scanner>.<coil>.<section>.<column>.<slice> "
                    "(sections si sifit snr ghost fit; columns min max mean sd sdpct p2ppct / p0 p1 p2 "
                    "chisq; slice 01..), plus hops.stability.<scanner>.<coil>.summary.<name>.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"hops-stability {__version__}")
    top.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("parse", help="print the datapoints of report files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--scanner", help="scanner name (default: the file's directory name)")
    p.add_argument("--format", choices=("graphite", "json"), default="graphite")
    _layout_args(p)

    p = sub.add_parser("ingest", help="one pass: deliver new reports, archive them, quarantine bad ones")
    _ingest_args(p)
    _verify_arg(p)
    _layout_args(p)

    p = sub.add_parser("watch", help="ingest continuously (inotify + polling)")
    _ingest_args(p)
    _verify_arg(p)
    p.add_argument("--poll-interval", dest="poll_interval", type=float, help="seconds between polls (default 30)")
    p.add_argument("--no-inotify", action="store_true", help="poll only")
    _layout_args(p)

    p = sub.add_parser("replay", help="re-send archived reports (e.g. after a Graphite rebuild)")
    p.add_argument("archive_dir", metavar="ARCHIVE_DIR")
    _ingest_args(p, dirs=False)
    p.add_argument("--scanner", help="scanner name (default: the scanner directory's name)")
    p.add_argument("--since", metavar="DATE", help="only scans at or after DATE (YYYY-MM-DD[THH:MM])")
    p.add_argument("--until", metavar="DATE", help="only scans before DATE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _layout_args(p)

    p = sub.add_parser("schema", help="print the carbon storage-schemas.conf section the configured "
                                      "metric names need (and check a storage-schemas.conf)")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="scanner directories, as for ingest")
    _layout_args(p)

    p = sub.add_parser("samples", help="generate synthetic reports (a year, two scanners)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=20250106)
    p.add_argument("--weeks", type=int, default=52,
                   help="weeks from 2025-01-06 (refused if a scan would lie in the future)")

    p = sub.add_parser("demo", help="start a private carbon-cache (+graphite-web), ingest the sample "
                                    "reports and show values read back")
    p.add_argument("--dir", help="working directory (default: a temporary one)")
    p.add_argument("--serve", action="store_true",
                   help="keep Graphite running afterwards so you can open the graphs (Ctrl-C stops)")
    p.add_argument("--no-web", action="store_true", help="carbon-cache only, no graphite-web")
    p.add_argument("--png", metavar="FILE", help="also save the SNR graph rendered by graphite-web to FILE")
    return top


def _config_from(args: argparse.Namespace) -> StabilityConfig:
    values: dict[str, Any] = load_config_file(getattr(args, "config", None))
    for key in ("graphite", "layout", "prefix", "metric_template", "summary_template", "coil_map", "site",
                "timezone", "archive_subdir", "failed_subdir", "settle_seconds", "poll_interval", "timeout",
                "storage_schemas", "verify_whisper_dir"):
        flag = getattr(args, key, None)
        if flag is not None:
            values[key] = flag
    config = build_config(values)
    dirs = getattr(args, "dirs", None)
    if dirs:
        config = config.with_directories(dirs)
    return config


def cmd_parse(args: argparse.Namespace) -> int:
    config = _config_from(args)
    status = EXIT_OK
    for name in args.files:
        path = Path(name)
        source = config.scanner_for(path.parent, args.scanner)
        try:
            report = read_report(path)
        except ReportParseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_LEFT
            continue
        except OSError as exc:
            print(f"error: {path}: {exc.strerror or exc}", file=sys.stderr)
            status = EXIT_LEFT
            continue
        metrics = report_metrics(report, source.name, config.layout,
                                 resolve_timezone(source.timezone, f"timezone of {source.name}"), source.site)
        now = time.time()
        if metrics.timestamp > now - MIN_AGE_SECONDS:
            print(f"warning: {path}: {future_scan_message(metrics, source, now)}", file=sys.stderr)
        sys.stdout.write(metrics.as_json() + "\n" if args.format == "json" else metrics.graphite_lines())
    return status


def _checked(config: StabilityConfig) -> StabilityConfig:
    """Start-up checks of a config that sends: scanners apart, carbon's storage schema."""
    config.check_scanners_apart()
    for warning in config.check_storage_schemas():
        logging.getLogger("hops.stability").warning("%s", warning)
    return config


def _make_ingestor(config: StabilityConfig, trust_file_times: bool) -> Ingestor:
    if not config.scanners:
        raise ConfigError("directories", "no scanner directories: give DIR arguments or [scanners.NAME] "
                                         "sections in the config file")
    _checked(config)
    sender = GraphiteSender(config.require_graphite(), timeout=config.timeout)
    return Ingestor(config.scanners, config.ingest_settings, sender, trust_file_times=trust_file_times)


def _print_pass(summary: PassSummary, quiet_if_empty: bool = False) -> None:
    if quiet_if_empty and not any(r.outcome is not Outcome.WAITING for r in summary.results):
        return
    for result in summary.results:
        print(result.describe(), flush=True)
    print(summary.line(), flush=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    ingestor = _make_ingestor(_config_from(args), trust_file_times=True)
    summary = ingestor.run_pass()
    _print_pass(summary)
    if summary.left_in_place:
        return EXIT_LEFT
    return EXIT_QUARANTINED if summary.count(Outcome.QUARANTINED) else EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from .watch import watch

    config = _config_from(args)
    ingestor = _make_ingestor(config, trust_file_times=False)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("hops.stability").info("signal %d: stopping after the current report", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    seen: dict[Path, Outcome] = {}

    def on_pass(summary: PassSummary) -> None:
        for result in summary.results:
            if seen.get(result.path) is not result.outcome:
                seen[result.path] = result.outcome
                print(result.describe(), flush=True)
            if not result.outcome.left_in_place:
                seen.pop(result.path, None)

    watch(ingestor, poll_interval=config.poll_interval, use_inotify=not args.no_inotify, stop=stop,
          on_pass=on_pass)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from .core.values import parse_date
    from .replay import replay

    config = _config_from(args)
    archive = Path(args.archive_dir)
    if not archive.is_dir():
        raise ConfigError("ARCHIVE_DIR", f"{archive} is not a directory")
    source = config.scanner_for(archive, args.scanner)
    _checked(dataclasses.replace(config, scanners=(source,)))
    sender = GraphiteSender(config.require_graphite(), timeout=config.timeout)
    summary = replay(archive, source.name, config.layout, sender, timezone=source.timezone,
                     since=parse_date("since", args.since) if args.since else None,
                     until=parse_date("until", args.until) if args.until else None,
                     progress=not args.no_progress, source=source)
    print(summary.line())
    return EXIT_LEFT if summary.undelivered or summary.unparsable or summary.held else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .schemas import schema_entries

    config = _config_from(args)
    if not config.scanners:
        raise ConfigError("directories", "no scanner directories: give DIR arguments or [scanners.NAME] "
                                         "sections in the config file")
    config.check_scanners_apart()
    print("# carbon storage-schemas.conf: put this before any other section that matches these metrics,")
    print("# then restart carbon (existing whisper files keep their schema: whisper-resize them).")
    print(schema_entries(config.metric_paths()), end="")
    if config.storage_schemas is not None:
        for warning in config.check_storage_schemas():     # raises ConfigError when it loses data
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{config.storage_schemas}: verified for {len(config.scanners)} scanner(s)", file=sys.stderr)
    return EXIT_OK


def cmd_samples(args: argparse.Namespace) -> int:
    from .samples import generate

    try:
        files = generate(args.out_dir, weeks=args.weeks, seed=args.seed)
    except ValueError as exc:
        raise ConfigError("weeks", str(exc)) from None
    print(f"wrote {len(files)} reports under {args.out_dir}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.dir, serve=args.serve, web=not args.no_web, png=args.png)


COMMANDS = {"parse": cmd_parse, "ingest": cmd_ingest, "watch": cmd_watch, "replay": cmd_replay,
            "schema": cmd_schema, "samples": cmd_samples, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    level = logging.WARNING - 10 * args.verbose if args.command != "watch" else logging.INFO - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"hops-stability: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
