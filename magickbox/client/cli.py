"""``mb``: the MagickBox command shell for HOPS magickbox nodes - push studies, list, read
logs, pull results and remove jobs across several nodes, over their REST API.

    mb machines add URL [--name NAME] [--token-stdin | --token TOKEN]
    mb machines rm NAME | list [--check] | activate NAME | deactivate NAME
    mb sender [NAME]
    mb buckets [REGEX]
    mb push AETITLE DIR [--sender NAME]        zips DIR, picks the least-loaded active machine
                                                with that bucket, prints the job id(s)
    mb list [REGEX]      mb log [REGEX]      mb pull [REGEX]      mb pull-input [REGEX]
    mb remove [REGEX] [--yes] [--study]

REGEX is a regular expression searched in each job's line (``#id bucket sender IP status
source worker message``), case-insensitive.  Output is JSON on stdout (for ``jq``);
progress bars and messages go to stderr.  Exit codes: 0 done, 1 a machine or job failed,
2 usage or configuration error.  Talks HTTP only: nothing of the node is imported.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from .config import Config, ConfigProblem, Machine, check_name, normalize_url
from .remote import Remote, RemoteError

__all__ = ["main"]

FINAL = ("success", "failed", "partial", "timeout", "cancelled")


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _note(text: str) -> None:
    print(f"mb: {text}", file=sys.stderr)


def _bar(total: int | None, desc: str, unit: str = "B") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024, file=sys.stderr,
                disable=None if not os.environ.get("MB_PROGRESS") else False, leave=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mb", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Start with: mb machines add http://NODE:8000 --token-stdin; "
                                            "mb sender YOUR-NAME; mb buckets; mb push AETITLE FOLDER")
    parser.add_argument("--config-dir", metavar="DIR", help="default $MB_CONFIG_DIR or ~/.config/mb")
    parser.add_argument("--machine", "-m", metavar="NAME", help="only this machine (default: all active ones)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a machine (default 30)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("machines", help="the magickbox nodes mb talks to")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = msub.add_parser("add", help="add a node (checks the URL and token)")
    a.add_argument("url", metavar="URL", help="http://host:port of the node's web UI / API")
    a.add_argument("--name", help="short name (default: the node's name)")
    a.add_argument("--token", help="the token (visible to other users in ps; prefer --token-stdin)")
    a.add_argument("--token-stdin", action="store_true", help="read the token from standard input")
    a.add_argument("--no-check", action="store_true", help="do not contact the node now")
    for name, text in (("rm", "forget a node"), ("activate", "use a node again"),
                       ("deactivate", "keep a node but leave it out")):
        msub.add_parser(name, help=text).add_argument("name", metavar="NAME|URL")
    lp = msub.add_parser("list", help="configured nodes (tokens are not shown)")
    lp.add_argument("--check", action="store_true", help="contact each node: reachable, load")

    p = sub.add_parser("sender", help="show or set who you are (the sender of your pushes)")
    p.add_argument("name", nargs="?", metavar="NAME", help='e.g. "hauke:project01"')

    p = sub.add_parser("buckets", help="buckets (computeModules) of the active machines")
    p.add_argument("regex", nargs="?", metavar="REGEX")

    p = sub.add_parser("push", help="send a folder of DICOM files to a bucket")
    p.add_argument("aetitle", metavar="AETITLE")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--sender", help="overrides mb sender for this push")

    for name, text in (("list", "matching jobs"), ("log", "matching jobs with their processing logs"),
                       ("pull", "download the output of matching finished jobs as zip files"),
                       ("pull-input", "download the input (DICOM) of matching jobs as zip files"),
                       ("remove", "remove matching finished jobs")):
        p = sub.add_parser(name, help=text)
        p.add_argument("regex", nargs="?", metavar="REGEX")
        p.add_argument("--status", action="append", choices=("queued", "running", *FINAL))
        p.add_argument("--bucket", action="append", metavar="AETITLE")
        if name in ("pull", "pull-input"):
            p.add_argument("--dir", default=".", help="where the zip files go (default: here)")
        if name == "remove":
            p.add_argument("--yes", "-y", action="store_true", help="do not ask")
            p.add_argument("--study", action="store_true", help="also remove the archived studies")
    return parser


# -- commands ---------------------------------------------------------------------------------------
def cmd_machines(args: argparse.Namespace, config: Config) -> int:
    if args.action == "add":
        url = normalize_url(args.url)
        if args.token_stdin:
            token = sys.stdin.readline().strip()
        elif args.token:
            token = args.token.strip()
        elif sys.stdin.isatty():
            token = getpass.getpass(f"token for {url}: ").strip()
        else:
            raise ConfigProblem("give the token with --token-stdin (or --token)")
        if not token:
            raise ConfigProblem("empty token")
        name = args.name
        if not args.no_check:
            with Remote(Machine(name or "new", url, token), args.timeout) as remote:
                status = remote.get("/api/status")       # proves URL and token
            name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", status["node"])[:64]
        name = check_name(name or re.sub(r"[^A-Za-z0-9_.-]", "-", url.split("://", 1)[1])[:64])
        existing = config.find(name) or config.find(url)
        if existing is not None:
            config.machines.remove(existing)
        config.machines.append(Machine(name, url, token))
        config.save()
        _print({"added": name, "url": url})
        return 0
    if args.action == "list":
        rows = []
        for m in config.machines:
            row: dict[str, Any] = {"name": m.name, "url": m.url, "active": m.active}
            if args.check:
                try:
                    with Remote(m, args.timeout) as remote:
                        status = remote.get("/api/status")
                    row.update(reachable=True, node=status["node"], load=status["load"])
                except RemoteError as exc:
                    row.update(reachable=False, error=str(exc))
            rows.append(row)
        _print(rows)
        return 0
    machine = config.find(args.name)
    if machine is None:
        raise ConfigProblem(f"no machine {args.name!r} (mb machines list)")
    if args.action == "rm":
        config.machines.remove(machine)
    else:
        machine.active = args.action == "activate"
    config.save()
    _print({args.action: machine.name})
    return 0


def cmd_sender(args: argparse.Namespace, config: Config) -> int:
    if args.name is not None:
        if not re.fullmatch(r"[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,63}", args.name):
            raise ConfigProblem("sender: 1-64 printable characters, no backslash")
        config.sender = args.name
        config.save()
    _print({"sender": config.sender})
    return 0


def _each(args: argparse.Namespace, config: Config) -> list[Machine]:
    machines = config.active(args.machine)
    if not machines:
        raise ConfigProblem("no active machines: mb machines add URL --token-stdin")
    return machines


def cmd_buckets(args: argparse.Namespace, config: Config) -> int:
    pattern = re.compile(args.regex, re.IGNORECASE) if args.regex else None
    rows, failed = [], 0
    for m in _each(args, config):
        try:
            with Remote(m, args.timeout) as remote:
                buckets = remote.get("/api/buckets")
        except RemoteError as exc:
            _note(str(exc))
            failed += 1
            continue
        for b in buckets:
            fields = [str(b.get(k, "")) for k in ("AETitle", "name", "description", "version")]
            if pattern is None or any(pattern.search(f) for f in fields):
                rows.append({"machine": m.name, **b})
    _print(rows)
    return 1 if failed else 0


def _zip_directory(directory: Path, target: Path) -> int:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    if not files:
        raise ConfigProblem(f"{directory}: no files to send")
    with _bar(sum(p.stat().st_size for p in files), f"zip {directory.name}") as bar, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in files:
            zf.write(path, path.relative_to(directory).as_posix())
            bar.update(path.stat().st_size)
    return len(files)


def choose_machine(candidates: list[tuple[Machine, list[dict[str, Any]]]], aetitle: str
                   ) -> tuple[Machine, dict[str, Any]] | None:
    """The machine whose bucket ``aetitle`` (enabled) has the fewest queued + running
    jobs; ties go to the machine with less work in all buckets, then to the first."""
    best = None
    for order, (machine, buckets) in enumerate(candidates):
        bucket = next((b for b in buckets if b["AETitle"] == aetitle and b["enabled"]), None)
        if bucket is None:
            continue
        key = (bucket["queued"] + bucket["running"], sum(b["queued"] + b["running"] for b in buckets), order)
        if best is None or key < best[0]:
            best = (key, machine, bucket)
    return (best[1], best[2]) if best else None


def cmd_push(args: argparse.Namespace, config: Config) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigProblem(f"{directory}: not a directory")
    candidates = []
    for m in _each(args, config):
        try:
            with Remote(m, args.timeout) as remote:
                candidates.append((m, remote.get("/api/buckets")))
        except RemoteError as exc:
            _note(f"{exc} (left out)")
    chosen = choose_machine(candidates, args.aetitle)
    if chosen is None:
        raise ConfigProblem(f"no active machine has an enabled bucket {args.aetitle!r} (mb buckets)")
    machine, bucket = chosen
    _note(f"sending to {machine.name} ({bucket['queued']} queued, {bucket['running']} running in {args.aetitle})")
    with tempfile.TemporaryDirectory(prefix="mb-push-") as tmp:
        archive = Path(tmp) / "study.zip"
        count = _zip_directory(directory, archive)
        with Remote(machine, args.timeout) as remote, _bar(archive.stat().st_size, f"push {machine.name}") as bar:
            result = remote.upload(archive, args.aetitle, args.sender or config.sender or None, bar.update)
    for skipped in result.get("skipped", []):
        _note(f"not sent: {skipped['file']}: {skipped['reason']}")
    ids = [j["id"] for j in result["jobs"]]
    _print({"machine": machine.name, "url": machine.url, "job": ids[0] if len(ids) == 1 else ids, "jobs": ids,
            "files": count, "instances": result["instances"], "skipped": len(result.get("skipped", []))})
    return 0


def _matching(args: argparse.Namespace, config: Config) -> tuple[list[tuple[Remote, dict[str, Any]]], int]:
    """(remote, job) for every matching job on every active machine; failures counted."""
    found, failed = [], 0
    for m in _each(args, config):
        remote = Remote(m, args.timeout)
        try:
            jobs = remote.jobs(args.regex, status=args.status, bucket=args.bucket)
        except RemoteError as exc:
            _note(str(exc))
            remote.close()
            failed += 1
            continue
        found += [(remote, {"machine": m.name, **j}) for j in jobs]
    return found, failed


def _close(found: list[tuple[Remote, dict[str, Any]]]) -> None:
    for remote in {id(r): r for r, _ in found}.values():
        remote.close()


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    found, failed = _matching(args, config)
    try:
        rows = []
        for remote, job in found:
            if args.command == "log":
                try:
                    job["log"] = remote.request("GET", f"/api/jobs/{job['id']}/log").text
                except RemoteError as exc:
                    job["log_error"] = str(exc)
                    failed += 1
            rows.append(job)
        _print(rows)
    finally:
        _close(found)
    return 1 if failed else 0


def cmd_pull(args: argparse.Namespace, config: Config) -> int:
    which = "input" if args.command == "pull-input" else "output"
    target_dir = Path(args.dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    found, failed = _matching(args, config)
    rows = []
    try:
        for remote, job in found:
            if which == "output" and job["status"] not in FINAL:
                _note(f"{job['machine']} job {job['id']} is {job['status']}: no output yet (left out)")
                continue
            target = target_dir / f"{job['machine']}-job{job['id']}-{which}.zip"
            try:
                with _bar(None, target.name) as bar:
                    size = remote.download(f"/api/jobs/{job['id']}/{which}.zip", target, bar.update)
            except RemoteError as exc:
                _note(str(exc))
                failed += 1
                continue
            rows.append({"machine": job["machine"], "id": job["id"], "status": job["status"], "file": str(target),
                         "bytes": size})
        _print(rows)
    finally:
        _close(found)
    return 1 if failed else 0


def cmd_remove(args: argparse.Namespace, config: Config) -> int:
    found, failed = _matching(args, config)
    try:
        final = [(r, j) for r, j in found if j["status"] in FINAL]
        for _, job in found:
            if job["status"] not in FINAL:
                _note(f"{job['machine']} job {job['id']} is {job['status']}: left alone (cancel it first)")
        if not final:
            _print([])
            return 1 if failed else 0
        if not args.yes:
            machines = sorted({j["machine"] for _, j in final})
            for _, job in final:
                print(f"  {job['machine']} #{job['id']} {job['status']} {job['bucket_ae']} {job['calling_ae']}",
                      file=sys.stderr)
            question = (f"Remove these {len(final)} job(s) on {', '.join(machines)}"
                        f"{' with their archived studies' if args.study else ''}? [y/N] ")
            print(question, end="", file=sys.stderr, flush=True)
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                _note("nothing removed")
                _print([])
                return 0
        rows = []
        for remote, job in final:
            try:
                result = remote.request("DELETE", f"/api/jobs/{job['id']}",
                                        params={"study": "true"} if args.study else None).json()
            except RemoteError as exc:
                _note(str(exc))
                failed += 1
                continue
            rows.append({"machine": job["machine"], "id": job["id"], "study_removed": result["study_removed"]})
        _print(rows)
    finally:
        _close(found)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        config = Config.load(Path(args.config_dir) if args.config_dir else None)
        handler = {"machines": cmd_machines, "sender": cmd_sender, "buckets": cmd_buckets, "push": cmd_push,
                   "list": cmd_list, "log": cmd_list, "pull": cmd_pull, "pull-input": cmd_pull,
                   "remove": cmd_remove}[args.command]
        return handler(args, config)
    except ConfigProblem as exc:
        print(f"mb: {exc}", file=sys.stderr)
        return 2
    except re.error as exc:
        print(f"mb: not a valid regular expression: {exc}", file=sys.stderr)
        return 2
    except RemoteError as exc:
        print(f"mb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
