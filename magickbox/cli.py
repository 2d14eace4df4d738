"""``magickbox``: the HOPS DICOM processing node.

    magickbox serve --data-dir DIR [--dicom-port PORT] [--http-port PORT] [--config FILE]
    magickbox worker --gearman HOST:PORT --data-dir DIR [--buckets AE,...]
    magickbox buckets list|create|run|install|remove|enable|disable ...
    magickbox backfill BUCKET --data-dir DIR [--since DATE] [--until DATE] [--match REGEX] [--dry-run]
    magickbox jobs --data-dir DIR [--status S] [--cancel ID] [--show ID]
    magickbox route test JOB|DIR [--success VALUE] | route status [JOB] | route retry JOB
                    | route echo HOST:PORT AETITLE
    magickbox qa phantom|analyse|install|bucket-dir ...   (phantom QA, see magickbox.qa.cli)
    magickbox tokens create|revoke|list --data-dir DIR [--role read|admin] [NAME]

Exit codes: 0 normal shutdown, 2 configuration error (the message names the key).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stability_collector.core.errors import ConfigError

from . import __version__
from .classify import RulesError
from .model import ACTIVE_STATUSES, JOB_STATUSES, JobStatus

if TYPE_CHECKING:
    from .db import Database
    from .layout import DataLayout


def data_options(parser: argparse.ArgumentParser, help_text: str = "the node's data directory",
                  default: str | None = None) -> None:
    """--config and --data-dir: every command that reads a node's data finds it the same way."""
    parser.add_argument("--config", metavar="FILE", help="the node's config file (its data_dir, buckets_dir, ...)")
    parser.add_argument("--data-dir", metavar="DIR", default=default,
                        help=help_text + ("" if default is None else f" (default {default})"))


def layout_from_args(args: argparse.Namespace) -> "DataLayout":
    """The node's data layout from --config (with --data-dir overriding its data_dir) or
    from --data-dir alone (default locations); --buckets-dir overrides the buckets."""
    from .config import ConfigError, load_node_config

    if getattr(args, "config", None):
        layout = load_node_config(args.config, {"data_dir": args.data_dir if args.data_dir != "." else None}).layout
    elif args.data_dir:
        from .layout import DataLayout
        layout = DataLayout.of(args.data_dir)
    else:
        raise ConfigError("data_dir", "give --data-dir DIR or --config FILE")
    if getattr(args, "buckets_dir", None):
        from dataclasses import replace
        layout = replace(layout, buckets=Path(args.buckets_dir))
    return layout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magickbox",
        description="HOPS DICOM processing node: a storage SCP whose called AE title selects a processing bucket.")
    parser.add_argument("--version", action="version", version=f"magickbox {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("serve", help="run the node (DICOM receiver, jobs, web UI and REST API)")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML config file (flags override it)")
    p.add_argument("--data-dir", metavar="DIR", help="archive, job store and buckets live here")
    p.add_argument("--dicom-port", type=int, metavar="PORT", help="DICOM port (default 11112; 0 = any free)")
    p.add_argument("--dicom-host", metavar="ADDR", help="listen address (default 0.0.0.0)")
    p.add_argument("--http-port", type=int, metavar="PORT",
                   help="web UI and REST API port (default 8000; 0 = any free)")
    p.add_argument("--node-name", help="metric path node (default: host name)")
    p.add_argument("--graphite", metavar="HOST:PORT", help="send node metrics to this carbon")
    p.add_argument("--quiet-seconds", type=float, help="study complete after this long without instances")
    p.add_argument("--gearman", metavar="HOST:PORT", action="append",
                   help="use this gearmand (repeatable; default: an embedded job server)")
    p.add_argument("--no-worker", action="store_true", help="do not run an embedded worker")
    p.add_argument("--engine", metavar="URL", help="container engine (Docker API) for the embedded worker")

    p = sub.add_parser("worker", help="run buckets for jobs from gearman (any number, on any host)")
    p.add_argument("--gearman", metavar="HOST:PORT", action="append", required=True)
    data_options(p, "the node's data root (shared between hosts)")
    p.add_argument("--buckets", metavar="AE,...", help="only these buckets (default: all enabled)")
    p.add_argument("--engine", metavar="URL", help="container engine (default $DOCKER_HOST or podman's socket)")
    p.add_argument("--worker-id", help="name in logs and job records (default host-pid)")
    p.add_argument("--route-senders", type=int, default=2, metavar="N",
                   help="result sends (routing) run at once by this worker; 0: none (default 2)")

    p = sub.add_parser("buckets", help="create, test, install and manage processing buckets")
    bsub = p.add_subparsers(dest="bucket_command", metavar="ACTION", required=True)
    for action, help_text in (("list", "installed buckets"), ("create", "scaffold a new bucket"),
                              ("run", "run a bucket on INPUT into OUTPUT exactly as the node does"),
                              ("install", "install a bucket directory or container image"),
                              ("remove", "take a bucket out of service (kept under .removed/)"),
                              ("enable", "accept studies for a bucket"), ("disable", "reject studies for a bucket")):
        bp = bsub.add_parser(action, help=help_text)
        data_options(bp, "node data root (buckets in DIR/buckets unless configured)", default=".")
        bp.add_argument("--buckets-dir", metavar="DIR", help="buckets directory (overrides the configuration)")
        if action in ("create", "run", "remove", "enable", "disable"):
            bp.add_argument("name", metavar="NAME")
        if action == "create":
            bp.add_argument("--ae-title", help="AE title (default Proc<name>)")
            bp.add_argument("--runner", choices=("process", "container"), default="process")
        if action == "run":
            bp.add_argument("input", metavar="INPUT")
            bp.add_argument("output", metavar="OUTPUT")
        if action in ("run", "install"):
            bp.add_argument("--engine", metavar="URL")
        if action == "install":
            bp.add_argument("source", metavar="PATH|IMAGE")

    p = sub.add_parser("backfill", help="run a bucket over archived studies")
    p.add_argument("bucket", metavar="BUCKET")
    data_options(p)
    p.add_argument("--since", metavar="YYYY-MM-DD", help="studies on or after this StudyDate")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="studies before this StudyDate")
    p.add_argument("--match", metavar="REGEX", help="search in study UID, descriptions and senders")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--force", action="store_true", help="also studies already done with this bucket version")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("route", help="routing rules: explain a job's routing, or C-ECHO a destination")
    rsub = p.add_subparsers(dest="route_command", metavar="ACTION", required=True)
    rp = rsub.add_parser("test", help="print which rules and destinations would fire for a job, and why "
                                      "(sends nothing)")
    rp.add_argument("target", metavar="JOB|DIR", help="a job id (with --data-dir) or a job directory "
                                                       "holding info.json (and proc.json)")
    data_options(rp, "node data root (routing.json there)", default=".")
    rp.add_argument("--rules", metavar="FILE", help="routing rules (default DATA/routing.json)")
    rp.add_argument("--success", metavar="VALUE", help="pretend proc.json said this")
    rp.add_argument("--me", metavar="HOST:PORT", help="what $me:$port stand for (default from --config "
                                                      "[routing]/[dicom], else 127.0.0.1:11112)")
    rp = rsub.add_parser("status", help="what routing did for a job (or the latest jobs): destinations, state, "
                                        "attempts, files sent, last error")
    rp.add_argument("job", metavar="JOB", nargs="?", type=int, help="a job id (default: the latest 20 jobs)")
    data_options(rp, default=".")
    rp = rsub.add_parser("retry", help="send a job's failed destinations again (fresh retries; the running "
                                       "node picks them up)")
    rp.add_argument("job", metavar="JOB", type=int)
    data_options(rp, default=".")
    rp = rsub.add_parser("echo", help="verify a destination with C-ECHO")
    rp.add_argument("address", metavar="HOST:PORT")
    rp.add_argument("called", metavar="AETITLE", help="the destination's AE title")
    rp.add_argument("--calling", metavar="AETITLE", default="MAGICKBOX", help="our AE title (default MAGICKBOX)")
    rp.add_argument("--timeout", type=float, default=10.0)

    p = sub.add_parser("jobs", help="list jobs, or cancel one")
    data_options(p)
    p.add_argument("--status", choices=[s.value for s in JOB_STATUSES])
    p.add_argument("--cancel", metavar="ID", type=int, help="cancel a queued or running job")
    p.add_argument("--show", metavar="ID", type=int, help="one job with its measures (metric, value, time, delivered)")

    from .qa.cli import add_qa_parser
    add_qa_parser(sub)
    p = sub.add_parser("tokens", help="tokens for the REST API, the web UI and mb: create, revoke, list")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    for action, help_text in (("create", "make a token (printed once; only its hash is kept)"),
                              ("revoke", "revoke a token at once (also in a running node)"),
                              ("list", "tokens by name and role")):
        tp = tsub.add_parser(action, help=help_text)
        data_options(tp)
        if action != "list":
            tp.add_argument("name", metavar="NAME", help="who or what uses it, e.g. alice or grafana")
        if action == "create":
            tp.add_argument("--role", choices=("read", "admin"), default="read",
                            help="read: look and download outputs; admin: also push, cancel, re-run, remove, "
                                 "download inputs, edit routing (default read)")
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_node_config
    from .node import Node

    overrides: dict[str, Any] = {
        "data_dir": args.data_dir,
        "dicom.port": args.dicom_port,
        "dicom.host": args.dicom_host,
        "http.port": args.http_port,
        "node_name": args.node_name,
        "graphite.address": args.graphite,
        "dicom.quiet_seconds": args.quiet_seconds,
        "gearman.servers": args.gearman,
        "worker.enabled": False if args.no_worker else None,
        "worker.engine": args.engine,
    }
    config = load_node_config(args.config, overrides)
    Node(config).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .worker import Worker, parse_servers

    logging.getLogger("gear").setLevel(logging.WARNING)
    buckets = [b.strip() for b in args.buckets.split(",") if b.strip()] if args.buckets else None
    worker = Worker(layout_from_args(args), parse_servers(args.gearman), buckets, args.engine, args.worker_id,
                    route_senders=max(0, args.route_senders))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    print(f"magickbox worker {worker.worker_id}: serving {', '.join(worker.functions) or 'no buckets yet'}",
          flush=True)
    stop.wait()
    worker.stop()
    return 0


def cmd_buckets(args: argparse.Namespace) -> int:
    from . import bucketadmin as ba
    from .buckets import BucketInfo

    root = layout_from_args(args).buckets
    action = args.bucket_command
    if action == "list":
        rows = ba.list_buckets(root)
        if not rows:
            print(f"no buckets in {root}")
        for b in rows:
            if isinstance(b, BucketInfo):
                run = b.run.image if b.run.runner == "container" else b.run.entrypoint
                print(f"{b.ae_title:<16} {'enabled ' if b.enabled else 'disabled'} {b.version:<10} "
                      f"{b.run.runner:<9} {run}  {b.directory}")
            else:
                print(f"BROKEN           {b}")
        return 0
    if action == "create":
        b = ba.create_bucket(root, args.name, args.ae_title, args.runner)
        print(f"created bucket {b.directory} (AE title {b.ae_title}, {b.run.runner} runner); edit work.sh, "
              f"then: magickbox buckets run {args.name} INPUT OUTPUT")
        return 0
    if action == "run":
        status, message, code = ba.run_bucket(root, args.name, Path(args.input), Path(args.output), args.engine)
        print(f"{status}: {message} (exit code {code})")
        return 0 if status == JobStatus.SUCCESS else 1
    if action == "install":
        b = ba.install_bucket(root, args.source, args.engine)
        print(f"installed bucket {b.ae_title} in {b.directory}")
        return 0
    if action == "remove":
        print(f"removed; kept in {ba.remove_bucket(root, args.name)}")
        return 0
    b = ba.set_enabled(root, args.name, action == "enable")
    print(f"bucket {b.ae_title} {'enabled' if b.enabled else 'disabled'}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from stability_collector.core.values import parse_date

    from .backfill import backfill
    from .bucketadmin import find_bucket
    from .db import Database
    from .store import DicomArchive

    layout = layout_from_args(args)
    bucket = find_bucket(layout.buckets, args.bucket)
    db = Database(layout.database)
    try:
        summary = backfill(db, DicomArchive(layout), layout.series_views, bucket,
                           since=parse_date("since", args.since).date() if args.since else None,
                           until=parse_date("until", args.until).date() if args.until else None,
                           match=args.match, dry_run=args.dry_run, force=args.force, progress=not args.no_progress)
    finally:
        db.close()
    if args.dry_run:
        for study in summary.queued:
            print(f"would queue {study}")
    print(summary.line(args.dry_run))
    if summary.job_ids:
        print(f"jobs {summary.job_ids[0]}..{summary.job_ids[-1]} are queued; a running node starts them")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from .db import Database
    from .jobfiles import JobDir
    from .results.measure_stage import measures_summary

    layout = layout_from_args(args)
    db = Database(layout.database)
    try:
        if args.cancel is not None:
            job = db.job(args.cancel)
            if job is None:
                print(f"no job {args.cancel}", file=sys.stderr)
                return 1
            if job.status not in ACTIVE_STATUSES:
                print(f"job {job.id} is already {job.status}")
                return 0
            JobDir.of(layout, job.id).request_cancel()
            print(f"cancel requested for job {job.id}")
            return 0
        if args.show is not None:
            return show_job(db, args.show)
        for job in reversed(db.jobs(args.status)):
            measures = measures_summary(db, job.id)
            print(f"{job.id:>6} {job.status:<9} {job.bucket_ae:<16} {job.calling_ae:<16} {job.source:<8} "
                  f"{job.instance_count:>5} inst  {job.message[:60]}" + (f"  [{measures[:80]}]" if measures else ""))
    finally:
        db.close()
    return 0


def show_job(db: "Database", job_id: int) -> int:
    """``magickbox jobs --show ID``: the job's status and message, then its measures."""
    from .results.measure_stage import job_measures
    job = db.job(job_id)
    if job is None:
        print(f"no job {job_id}", file=sys.stderr)
        return 1
    print(f"job {job.id}: {job.status}  bucket {job.bucket_ae}  from {job.calling_ae}  {job.instance_count} inst"
          + (f"\n  {job.message}" if job.message else ""))
    measures, error = job_measures(db, job.id)
    if error:
        print(f"measures refused: {error}")
    for m in measures:
        unit = f" {m['unit']}" if m["unit"] else ""
        print(f"  {m['path']} = {m['value']:g}{unit}  at {m['time']}  "
              f"{'delivered' if m['delivered'] else 'waiting for Graphite'}")
    if not measures and not error:
        print("no measures")
    return 0


def _host_port(text: str) -> tuple[str, int]:
    from .config import ConfigError, parse_host_port
    try:
        return parse_host_port("address", text)
    except ConfigError as exc:
        raise SystemExit(f"magickbox: {exc}") from None


def cmd_route(args: argparse.Namespace) -> int:
    import json

    from .jobfiles import read_proc_json
    from .results.routing import RoutingContext, RoutingError, load_rules
    from .results.send import Destination, echo

    if args.route_command == "echo":
        host, port = _host_port(args.address)
        ok, text = echo(Destination(host, port, args.called, args.calling), timeout=args.timeout)
        print(("OK " if ok else "FAILED ") + text)
        return 0 if ok else 1
    layout = layout_from_args(args)
    if args.route_command == "status":
        return _route_status(layout, args.job)
    if args.route_command == "retry":
        from .db import Database
        from .results.outflow import RouteStore
        db = Database(layout.database)
        try:
            count = RouteStore(db).retry_failed(args.job)
        finally:
            db.close()
        print(f"job {args.job}: {count} failed send(s) due again")
        return 0 if count else 1
    jobdir = Path(args.target) if not args.target.isdigit() else layout.job_dir(args.target)
    try:
        info = json.loads((jobdir / "info.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"magickbox: cannot read {jobdir / 'info.json'}: {exc}", file=sys.stderr)
        return 1
    success = args.success
    if success is None:
        success, why = read_proc_json(jobdir / "result" / "output" / "proc.json", jobdir / "result" / "proc.json",
                                      jobdir / "proc.json", jobdir / "output" / "proc.json")
        if success is None:
            print(f"(no usable proc.json: {why}; routing as success=\"failed\")")
            success = "failed"
    types = {t for values in (info.get("ClassifyTypes") or {}).values() for t in values}
    ctx = RoutingContext(str(info.get("AETitleCalled", "")), str(info.get("AETitleCaller", "")), success,
                         frozenset(types))
    try:
        table = load_rules(args.rules or layout.routing_rules)
    except RoutingError as exc:
        print(f"magickbox: {exc}", file=sys.stderr)
        return 2
    print(f"job: called {ctx.called_ae!r}, calling {ctx.calling_ae!r}, success {ctx.success!r}, "
          f"series types {sorted(types)}; rules from {table.source}")
    me, known_aes = ("127.0.0.1", 11112), {}
    if getattr(args, "config", None):
        from .config import load_node_config
        config = load_node_config(args.config, {"data_dir": args.data_dir if args.data_dir != "." else None})
        host = config.routing.me or config.dicom.host
        me = ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host, config.routing.port or config.dicom.port)
        known_aes = dict(config.routing.known_aes)
    if args.me:
        me = _host_port(args.me)
    for line in table.explain(ctx, me=me, known_aes=known_aes):
        print(line)
    return 0


def _route_status(layout: "DataLayout", job_id: int | None) -> int:
    import time

    from .db import Database
    from .results.outflow import routing_records

    db = Database(layout.database)
    try:
        if job_id is not None:
            found = db.job(job_id)
            if found is None:
                print(f"magickbox: no job {job_id}", file=sys.stderr)
                return 1
            jobs = [found]
        else:
            jobs = list(reversed(db.jobs(limit=20)))
        for job in jobs:
            records = routing_records(db, job.id)
            print(f"job {job.id} {job.status} {job.bucket_ae}: " + (f"{len(records)} destination(s)" if records
                                                                    else "nothing routed"))
            for r in records:
                when = (f", next try {time.strftime('%H:%M:%S', time.localtime(r['next_try']))}"
                        if r["next_try"] else "")
                print(f"  rule {r['rule']} {r['directory']} -> {r['destination']}: {r['state']}, "
                      f"{r['sent']}/{r['files']} sent, attempt {r['attempts']} of {r['retries'] + 1}{when}"
                      + (f"; {r['last_error']}" if r["last_error"] else ""))
    finally:
        db.close()
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    import time

    from .api.tokens import TokenError, TokenStore

    store = TokenStore(layout_from_args(args).api_tokens)
    try:
        if args.token_command == "create":
            token = store.create(args.name, args.role)
            print(token)
            print(f"token {args.name!r} ({args.role}) created; it is shown only now. Use it in the web UI, "
                  f"with mb (mb machines add URL --token-stdin), or as 'Authorization: Bearer <token>'.",
                  file=sys.stderr)
        elif args.token_command == "revoke":
            gone = store.revoke(args.name)
            print(f"token {gone.name!r} ({gone.role}) revoked")
        else:
            tokens = store.list()
            if not tokens:
                print(f"no tokens in {store.path}")
            for t in tokens:
                print(f"{t.name:<24} {t.role:<6} created {time.strftime('%Y-%m-%d %H:%M', time.localtime(t.created))}")
    except TokenError as exc:
        print(f"magickbox tokens: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from .logsafe import configure
    from .store import private_umask
    configure(max(logging.DEBUG, logging.INFO - 10 * args.verbose))   # one sanitised line per event
    private_umask()                       # patient data: no access for other users (store.FILE_MODE)
    try:
        if args.command == "qa":
            from .qa.cli import qa_main
            return qa_main(args)
        return {"serve": cmd_serve, "worker": cmd_worker, "buckets": cmd_buckets, "backfill": cmd_backfill,
                "jobs": cmd_jobs, "route": cmd_route, "tokens": cmd_tokens}[args.command](args)
    except (ConfigError, RulesError) as exc:
        print(f"magickbox: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
