"""``hops-qa``: QA of phantom series stored in Graphite — baselines, tolerance and action
levels, control rules, service events, missed scans, reports.

Exit codes: 0 done; 1 something was left undone (graphite-web or carbon unreachable, a
service event stored but not yet posted to graphite-web); 2 bad usage or configuration.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..core.errors import ConfigError
from ..core.graphite import GraphiteSender
from .config import DEFAULT_LEVELS, QAConfig, describe_levels, load_qa_config
from .control import RULE_ALIASES, RULES
from .evaluate import QAEvaluator, summarise
from .events import EventStore, EventStoreError, post_event, sync_events
from .graphiteweb import GraphiteWeb, GraphiteWebError

EXIT_OK, EXIT_LEFT, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("hops.qa")


def _common(p: argparse.ArgumentParser, graphite: bool = True, web: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    if graphite:
        p.add_argument("--graphite", metavar="HOST:PORT", help="carbon plaintext receiver for the results")
    if web:
        p.add_argument("--graphite-web", dest="graphite_web", metavar="URL",
                       help="graphite-web (render API and events), e.g. http://127.0.0.1:8080")
    p.add_argument("--state-dir", dest="state_dir", metavar="DIR", help="where service events are kept")
    p.add_argument("--timezone", help="IANA zone of dates given and shown (default: the config's, else this host's)")


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hops-qa",
        description="Evaluate phantom QA series stored in Graphite (hops.stability.<scanner>.<coil>.summary.* "
                    "and .fbirn.*): baselines per phase, tolerance/action levels, Western Electric/Nelson rules, "
                    "EWMA/CUSUM, missed scans.  Results go back to Graphite as "
                    "hops.qa.<scanner>.<coil>.<metric>.{status,center,ucl,lcl,...} and "
                    "hops.qa.<scanner>.days_since_scan.")
    top.add_argument("--version", action="version", version=f"hops-qa {__version__}")
    top.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("evaluate", help="one pass: evaluate every series and send the results")
    _common(p)
    p.add_argument("--scanner", action="append", help="only this scanner (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the result lines instead of sending them")

    p = sub.add_parser("run", help="long-running: evaluate after each new scan or service event")
    _common(p)

    p = sub.add_parser("event", help="service events (a new baseline phase starts at each)")
    ev = p.add_subparsers(dest="event_command", metavar="ACTION")
    q = ev.add_parser("add", help="record a service event and post it to graphite-web")
    _common(q, graphite=False)
    q.add_argument("--scanner", required=True)
    q.add_argument("--what", required=True, help="what was done, e.g. 'coil replaced'")
    q.add_argument("--when", metavar="DATE", help="YYYY-MM-DD[THH:MM[:SS]] in the configured time zone, "
                                                  "or an ISO time with offset (default: now)")
    q.add_argument("--coil", help="only this coil starts a new phase (default: every coil of the scanner)")
    q = ev.add_parser("list", help="list recorded service events")
    _common(q, graphite=False)
    q.add_argument("--scanner")
    q = ev.add_parser("sync", help="post events not yet in graphite-web")
    _common(q, graphite=False)

    p = sub.add_parser("report", help="HTML (and PDF) report with control charts, events and violations")
    _common(p, graphite=False)
    p.add_argument("--scanner", required=True)
    p.add_argument("--since", metavar="DATE", help="show scans from DATE (the evaluation uses all history)")
    p.add_argument("--until", metavar="DATE", help="show scans before DATE")
    p.add_argument("--out", metavar="FILE", help="HTML file (default: hops-qa-<scanner>-<date>.html)")
    p.add_argument("--pdf", metavar="FILE", help="also write a PDF")
    p.add_argument("--charts-dir", dest="charts_dir", metavar="DIR", help="also write each chart as a PNG here")

    p = sub.add_parser("simulate", help="false alarms and detection of the configured rules on synthetic series")
    _common(p, graphite=False, web=False)
    p.add_argument("--cv", type=float, action="append", metavar="PCT",
                   help="scan-to-scan variation in %% (repeatable; default 0.4 0.5 1 1.5)")
    p.add_argument("--trials", type=int, default=200)

    p = sub.add_parser("config", help="validate the configuration and show the levels in force and their basis")
    _common(p, graphite=False, web=False)
    p.add_argument("--scanner", default="*", help="show the levels of this scanner")
    return top


def _config(args: argparse.Namespace) -> QAConfig:
    overrides: dict[str, Any] = {k: getattr(args, k, None) for k in ("graphite", "graphite_web", "state_dir",
                                                                     "timezone")}
    return load_qa_config(getattr(args, "config", None), overrides)


def parse_when(text: str, config: QAConfig, key: str = "--when") -> int:
    """Epoch seconds of a date/time; a naive one is read in the configured time zone."""
    try:
        when = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(key, f"expected YYYY-MM-DD[THH:MM[:SS]], found {text!r}") from None
    if when.tzinfo is None:
        tz = config.tzinfo
        when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
    return int(when.timestamp())


def cmd_evaluate(args: argparse.Namespace) -> int:
    config = _config(args)
    web = GraphiteWeb(config.require_web(), config.timeout)
    sender = None if args.dry_run else GraphiteSender(config.require_graphite(), timeout=config.timeout)
    evaluator = QAEvaluator(config, web, sender, EventStore(config.state_dir))
    if args.dry_run:
        evaluations, activity, lines = evaluator.evaluate(args.scanner)
        for scanner_lines in lines.values():
            sys.stdout.writelines(scanner_lines)
        return EXIT_OK
    result = evaluator.run_pass(args.scanner)
    for line in summarise(result.evaluations):
        print(line)
    for act in result.activity.values():
        days = act.days_since_scan
        print(f"{act.scanner}: last scan {days:.1f} days ago" + (" — OVERDUE" if act.overdue else ""))
    for err in result.errors:
        print(f"hops-qa: {err}", file=sys.stderr)
    print(f"{len(result.evaluations)} series evaluated, {result.lines_delivered} datapoints delivered")
    if not result.evaluations and result.ok:
        print("hops-qa: no series found (check graphite_web, prefix and metrics)", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_LEFT


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    evaluator = QAEvaluator(config, GraphiteWeb(config.require_web(), config.timeout),
                            GraphiteSender(config.require_graphite(), timeout=config.timeout),
                            EventStore(config.state_dir))
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def on_pass(result) -> None:
        if result.lines_delivered:
            log.info("%d series evaluated, %d datapoints delivered", len(result.evaluations), result.lines_delivered)
            for line in summarise(result.evaluations):
                log.debug("%s", line)

    log.info("hops-qa run: reading %s, writing to %s every %g s", config.graphite_web, config.graphite,
             config.poll_interval)
    evaluator.run_forever(stop, on_pass)
    return EXIT_OK


def cmd_event(args: argparse.Namespace) -> int:
    if not args.event_command:
        raise ConfigError("event", "give an action: add, list or sync")
    config = _config(args)
    store = EventStore(config.state_dir)
    if args.event_command == "list":
        for e in store.list(args.scanner):
            when = _dt.datetime.fromtimestamp(e.when, config.tzinfo).isoformat(timespec="minutes")
            print(f"{e.id[:8]}  {when}  {e.scanner:<12} {e.coil or '(all coils)':<12} "
                  f"{'posted ' if e.posted else 'PENDING'}  {e.what}")
        return EXIT_OK
    web = GraphiteWeb(config.require_web(), config.timeout)
    if args.event_command == "add":
        when = parse_when(args.when, config) if args.when else int(time.time())
        event = store.add(args.scanner, args.what, when, args.coil)
        print(f"recorded event {event.id[:8]} in {store.path}: {event.label()} at "
              f"{_dt.datetime.fromtimestamp(when, config.tzinfo).isoformat(timespec='minutes')}")
        try:
            post_event(web, event)
        except GraphiteWebError as exc:
            print(f"hops-qa: not yet in graphite-web ({exc}); 'hops-qa event sync' or a running "
                  "'hops-qa run' will post it", file=sys.stderr)
            return EXIT_LEFT
        store.mark_posted(event.id)
        print("posted to graphite-web as an event (Grafana annotation)")
        return EXIT_OK
    posted, errors = sync_events(store, web)
    print(f"{posted} event(s) posted")
    for err in errors:
        print(f"hops-qa: {err}", file=sys.stderr)
    return EXIT_LEFT if errors else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    config = _config(args)
    web = GraphiteWeb(config.require_web(), config.timeout)
    since = parse_when(args.since, config, "--since") if args.since else None
    until = parse_when(args.until, config, "--until") if args.until else None
    out = Path(args.out or f"hops-qa-{args.scanner}-{_dt.date.today().isoformat()}.html")
    report = build_report(config, web, EventStore(config.state_dir), args.scanner, since=since, until=until)
    if not report.charts:
        print(f"hops-qa: no series for scanner {args.scanner!r} in graphite-web", file=sys.stderr)
        return EXIT_LEFT
    report.write_html(out)
    print(f"wrote {out} ({len(report.charts)} charts, {len(report.violations)} violations)")
    if args.pdf:
        report.write_pdf(Path(args.pdf))
        print(f"wrote {args.pdf}")
    if args.charts_dir:
        for path in report.write_pngs(Path(args.charts_dir)):
            print(f"wrote {path}")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import characteristics

    config = _config(args)
    scanner = config.defaults
    print(f"baseline {scanner.baseline_scans} scans, rules {', '.join(scanner.rules)}, "
          f"{'prediction' if config.prediction_limits else 'textbook'} limits")
    for cv in args.cv or (0.4, 0.5, 1.0, 1.5):
        print(characteristics(config, cv, trials=args.trials).line(), flush=True)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    scanner = config.for_scanner(args.scanner)
    print(f"graphite: {config.graphite or '(not set)'}   graphite_web: {config.graphite_web or '(not set)'}")
    print(f"state_dir: {config.state_dir}")
    print(f"metrics: {', '.join(config.metrics)}")
    print(f"baseline: first {scanner.baseline_scans} scans of a phase; "
          f"{'prediction' if config.prediction_limits else 'textbook'} limits")
    print("rules: " + ", ".join(f"{r} ({RULES[r]})" for r in scanner.rules))
    print(f"missed scan: more than {scanner.expected_interval_days:g} days without one")
    explicit = [m for m in config.metrics if "*" not in m]
    for line in describe_levels(config, args.scanner, explicit):
        print("  " + line)
    patterns = [m for m in config.metrics if "*" in m]
    if patterns:
        print(f"series matching {', '.join(patterns)} take the first matching entry of: "
              + ", ".join([*config.for_scanner(args.scanner).levels, *config.defaults.levels,
                           *(p for p in DEFAULT_LEVELS if "*" in p)]) + " (else control rules only)")
    print(f"(known rules: {', '.join(RULES)}; aliases {', '.join(f'{a}={b}' for a, b in RULE_ALIASES.items())})")
    return EXIT_OK


COMMANDS = {"evaluate": cmd_evaluate, "run": cmd_run, "event": cmd_event, "report": cmd_report,
            "simulate": cmd_simulate, "config": cmd_config}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    level = (logging.INFO if args.command == "run" else logging.WARNING) - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"hops-qa: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EventStoreError as exc:
        print(f"hops-qa: {exc}", file=sys.stderr)
        return EXIT_LEFT
    except GraphiteWebError as exc:
        print(f"hops-qa: {exc}", file=sys.stderr)
        return EXIT_LEFT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
