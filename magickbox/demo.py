"""The full tour of HOPS on one machine, on embedded defaults (``deploy/local/demo.sh``).

    python -m magickbox.demo [--dir .hops-demo] [--serve | --no-serve]

Steps (each prints what it did; one that does not happen within its timeout stops the
tour with ``FAILED: <step>: <why>`` and exit status 1):

1. ``graphite``  a private carbon-cache and graphite-web on free loopback ports;
2. ``nodes``     ``magickbox serve`` (embedded job server and worker, the ProcQA bucket
   installed with the process runner, a ``routing.json`` sending ProcQA outputs to the
   second node, node metrics to carbon) and a second ``magickbox serve`` that receives
   the routed results (bucket ``QAREPORTS``);
3. ``samples``   ``sample_statfiles/`` (a year of Stability reports of two scanners)
   ingested into carbon and read back from whisper;
4. ``phantom``   a synthetic fBIRN phantom series (``magickbox qa phantom``), acquired
   yesterday, sent by C-STORE to the ProcQA bucket;
5. ``job``       the job followed through the REST API until it ends (success expected);
6. ``routing``   the QA report (``report_sc.dcm``) arrives at the second node and the
   job's ``routing`` record says it was delivered;
7. ``measures``  the fBIRN datapoints of the job's ``measures.json`` are in whisper at the
   acquisition time and the job's ``measures`` record is not empty;
8. ``qa``        ``hops-qa evaluate`` and ``hops-qa report`` for the phantom's scanner;
9. ``links``     the web UI and every graph URL printed below answer (graphs as PNG);

then where to look: the web UI with an admin token, graphite-web graphs, the reports.
With ``--serve`` (the default when run from a terminal) everything keeps running until
Ctrl-C.  Ctrl-C (SIGINT, also to the whole process group) or SIGTERM at any moment stops
every process the tour started, by PID.

"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["main", "run_tour", "routing_delivered", "measures_delivered", "StepFailed"]

QA_AE = "ProcQA"
RECEIVER_AE = "QAREPORTS"
SCANNER_AE = "PRISMA1"
PHANTOM_STATION = "prisma1"



class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step, self.message = step, message


def routing_delivered(entries: Any) -> tuple[bool, str]:
    """Whether a job's ``routing`` record (``GET /api/jobs/{id}``, one entry per
    destination, see :func:`magickbox.results.outflow.routing_records`) says its results
    were delivered: at least one destination ``sent``, every other one ``skipped`` (a
    fail-over chain stopped after a success).  Returns (yes, why not)."""
    from .results.outflow import SENT, SKIPPED
    if not entries:
        return False, "the job has no routing record"
    states = [e.get("state") for e in entries]
    if SENT not in states or any(state not in (SENT, SKIPPED) for state in states):
        return False, "destinations: " + ", ".join(f"{e.get('destination')} {e.get('state')} "
                                                   f"{e.get('last_error') or ''}".strip() for e in entries)
    return True, ""


def measures_delivered(entries: Any) -> tuple[bool, str]:
    """Whether a job's ``measures`` record says every measure was confirmed by carbon."""
    if not entries:
        return False, "the job has no measures record"
    waiting = [e.get("path") for e in entries if not e.get("delivered")]
    return (False, f"{len(waiting)} measure(s) not delivered yet, e.g. {waiting[0]}") if waiting else (True, "")


def _api(url: str, token: str, path: str) -> Any:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def _wait(what: str, step: str, timeout: float, check: Callable[[], Any], interval: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy; :class:`StepFailed` naming the
    step and ``what`` after ``timeout`` seconds (with the last exception, if any)."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, KeyError) as exc:
            last_error = f" (last error: {type(exc).__name__}: {exc})"
        if time.monotonic() >= deadline:
            raise StepFailed(step, f"{what} did not happen within {timeout:.0f} s{last_error}")
        time.sleep(interval)


class Tour:
    """The processes and state of one tour; :meth:`cleanup` stops what was started."""

    def __init__(self, base: Path, python: str = sys.executable):
        self.base = base.resolve()
        self.python = python
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.graphite: Any = None
        self.started = time.monotonic()
        self.step_number = 0
        self.facts: dict[str, Any] = {}

    # -- processes -------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.children.append((name, proc))
        return proc

    def cleanup(self) -> None:
        """Stop every child (SIGTERM, SIGKILL after 10 s) and Graphite, by PID."""
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.children):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.children.clear()
        if self.graphite is not None:
            self.graphite.stop()
            self.graphite = None

    # -- steps -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, name: str, title: str) -> Iterator[None]:
        self.step_number += 1
        started = time.monotonic()
        print(f"\n[{self.step_number}] {name}: {title}", flush=True)
        yield
        print(f"    ok: {name} ({time.monotonic() - started:.1f} s)", flush=True)


def _node_args(python: str, data: Path, dicom_port: int, http_port: int, name: str,
               graphite: str | None) -> list[str]:
    args = [python, "-m", "magickbox.cli", "serve", "--data-dir", str(data), "--dicom-port", str(dicom_port),
            "--dicom-host", "127.0.0.1", "--http-port", str(http_port), "--quiet-seconds", "2",
            "--node-name", name]
    return args + (["--graphite", graphite] if graphite else [])


def routing_rules(receiver_port: int) -> dict:
    """MagickBox routing.json: ProcQA outputs (success or partial) to the receiving node."""
    return {"routing": [{
        "name": "QA reports to the demo's receiving node",
        "AETitleIn": QA_AE,
        "RouteDirectory": "OUTPUT",
        "send": [{"success|partial": {"IP": "127.0.0.1", "PORT": str(receiver_port),
                                      "AETitleSender": "HOPSDEMO", "AETitleTo": RECEIVER_AE}}]}]}


def _receiver_bucket(buckets: Path) -> None:
    """The second node's bucket: keeps what arrives in its archive, does nothing else."""
    directory = buckets / "qareports"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "info.json").write_text(json.dumps({
        "name": "QAREPORTS", "description": "Receives routed QA reports (HOPS demo)", "version": "1.0",
        "AETitle": RECEIVER_AE, "license": "MIT", "enabled": 1, "run": {"runner": "process"}}, indent=1))
    work = directory / "work.sh"
    work.write_text("#!/bin/sh\necho '[{\"success\": \"success\", \"message\": \"archived\"}]' > \"$2/proc.json\"\n")
    work.chmod(0o755)


def _find_in_archive(data: Path, sop_uid: str) -> Path | None:
    from .layout import DataLayout
    hits = [p for p in DataLayout.of(data).archive.rglob(f"{sop_uid}.dcm") if ".superseded" not in p.parts]
    return hits[0] if hits else None


def run_tour(base: Path, serve: bool = False, timeout_scale: float = 1.0) -> int:
    """Run the tour in ``base`` (its sub-directories are replaced); 0 when every step
    passed, 1 when one failed, 2 when something is not installed."""
    from stability_collector.demo import ingest_and_read_back, snr_graph_url
    from stability_collector.localgraphite import GraphiteNotInstalled, LocalGraphite, free_port, wait_for_port

    base.mkdir(parents=True, exist_ok=True)
    for sub in ("graphite", "scanners", "node", "receiver", "phantom", "qa", "logs"):
        shutil.rmtree(base / sub, ignore_errors=True)
    tour = Tour(base)
    t = timeout_scale
    logs = tour.base / "logs"
    node_dir, receiver_dir = tour.base / "node", tour.base / "receiver"
    ports = {"node_dicom": free_port(), "node_http": free_port(), "recv_dicom": free_port(),
             "recv_http": free_port()}
    node_url = f"http://127.0.0.1:{ports['node_http']}"
    try:
        try:
            tour.graphite = LocalGraphite(tour.base / "graphite", web=True)
        except GraphiteNotInstalled as exc:
            print(f"cannot run the demo: {exc}")
            return 2
        graphite = tour.graphite

        with tour.step("graphite", "a private carbon-cache and graphite-web on loopback"):
            try:
                graphite.start()
            except RuntimeError as exc:       # includes GraphiteNotInstalled (graphite-web setup)
                raise StepFailed("graphite", str(exc)) from None
            print(f"    carbon-cache {graphite.line_address} (plaintext), graphite-web {graphite.web_url}, "
                  f"whisper files in {graphite.whisper_dir}")

        with tour.step("nodes", "two magickbox nodes: the processing node (ProcQA) and a receiving node"):
            from .api.tokens import TokenStore
            from .layout import DataLayout
            from .results.routing import load_rules
            install = subprocess.run([tour.python, "-m", "magickbox.cli", "qa", "install", "--data-dir", str(node_dir)],
                                     capture_output=True, text=True, timeout=120 * t)
            if install.returncode != 0:
                raise StepFailed("nodes", f"magickbox qa install failed: {install.stderr.strip()[-500:]}")
            print("    " + install.stdout.strip())
            rules_path = DataLayout.of(node_dir).routing_rules
            rules_path.write_text(json.dumps(routing_rules(ports["recv_dicom"]), indent=1) + "\n")
            load_rules(rules_path)                      # the file must be valid MagickBox routing
            print(f"    wrote {rules_path}: {QA_AE} outputs -> {RECEIVER_AE}@127.0.0.1:{ports['recv_dicom']}")
            token = TokenStore(DataLayout.of(node_dir).api_tokens).create("demo", "admin")
            tour.facts["token"] = token
            _receiver_bucket(DataLayout.of(receiver_dir).buckets)
            tour.spawn("magickbox serve (node)",
                       _node_args(tour.python, node_dir, ports["node_dicom"], ports["node_http"], "demo",
                                  graphite.line_address), logs / "node.log")
            tour.spawn("magickbox serve (receiver)",
                       _node_args(tour.python, receiver_dir, ports["recv_dicom"], ports["recv_http"],
                                  "demoreceiver", None), logs / "receiver.log")
            for (name, proc), port_names in zip(tour.children, (("node_dicom", "node_http"),
                                                                ("recv_dicom", "recv_http"))):
                for port_name in port_names:
                    try:
                        wait_for_port(ports[port_name], timeout=60 * t, proc=proc, what=name,
                                      log=logs / ("node.log" if "node" in port_name else "receiver.log"))
                    except RuntimeError as exc:
                        raise StepFailed("nodes", str(exc)) from None
            print(f"    node: DICOM {QA_AE}@127.0.0.1:{ports['node_dicom']}, web UI and API {node_url} "
                  f"(embedded job server and worker, process runner)")
            print(f"    receiving node: DICOM {RECEIVER_AE}@127.0.0.1:{ports['recv_dicom']}")

        with tour.step("samples", "sample_statfiles/ (Stability reports, two scanners, 2025) into carbon"):
            scanners = tour.base / "scanners"
            repo_samples = Path(__file__).resolve().parents[1] / "sample_statfiles"
            if repo_samples.is_dir():
                shutil.copytree(repo_samples, scanners)
            else:
                from stability_collector.samples import generate
                generate(scanners)
            print(f"    {sum(1 for _ in scanners.rglob('Stability_*.txt'))} reports copied to {scanners}")
            if ingest_and_read_back(graphite, scanners) != 0:
                raise StepFailed("samples", "not every sample report was delivered and read back from whisper")

        with tour.step("phantom", f"a synthetic fBIRN phantom series sent by DICOM to {QA_AE}"):
            from .qa.phantom import generate as generate_phantom
            from .qa.phantom import spec_from_options, write_series
            from .results.send import Destination, send_files
            acquired = (dt.datetime.now() - dt.timedelta(days=1)).replace(hour=7, minute=30, second=0, microsecond=0)
            spec = spec_from_options(volumes=60, slices=16, station_name=PHANTOM_STATION,
                                     start=acquired.isoformat(), seed=int(acquired.strftime("%Y%m%d")))
            files = write_series(generate_phantom(spec), tour.base / "phantom", "mosaic")
            print(f"    {len(files)} mosaic images ({spec.volumes} volumes x {spec.slices} slices), StationName "
                  f"{PHANTOM_STATION}, acquired {acquired.isoformat(sep=' ')}")
            report = send_files(files, Destination("127.0.0.1", ports["node_dicom"], QA_AE, SCANNER_AE),
                                timeout=30 * t)
            if not report.ok:
                raise StepFailed("phantom", f"C-STORE to the node failed: {report.summary()}")
            print(f"    C-STORE {SCANNER_AE} -> {QA_AE}: {report.summary()}")
            tour.facts["acquired"] = acquired

        with tour.step("job", f"the {QA_AE} job followed to its end (REST API)"):
            from .model import FINAL_STATUSES
            jobs = _wait("a ProcQA job (the study completes after 2 s without instances)", "job", 30 * t,
                         lambda: _api(node_url, token, f"/api/jobs?bucket={QA_AE}"))
            job_id = jobs[0]["id"]
            print(f"    job {job_id} created ({jobs[0]['status']})")
            seen: list[str] = []

            def final() -> dict | None:
                detail = _api(node_url, token, f"/api/jobs/{job_id}")
                if detail["status"] not in seen:
                    seen.append(detail["status"])
                    print(f"    job {job_id}: {detail['status']}", flush=True)
                return detail if detail["status"] in FINAL_STATUSES else None

            detail = _wait(f"job {job_id} ending", "job", 90 * t, final)
            if detail["status"] != "success":
                raise StepFailed("job", f"job {job_id} ended {detail['status']}: {detail.get('message')}")
            print(f"    {detail.get('message')}")
            output = DataLayout.of(node_dir).job_dir(job_id) / "result" / "output"
            print(f"    outputs: {', '.join(sorted(p.name for p in output.iterdir()))}")
            tour.facts.update(job_id=job_id, output=output)
        results_deadline = time.monotonic() + 30 * t

        def routing_step() -> None:
            import pydicom
            report_dcm = output / "report_sc.dcm"
            if not report_dcm.exists():
                raise StepFailed("routing", f"the job wrote no {report_dcm.name} to route")
            sop = str(pydicom.dcmread(report_dcm, stop_before_pixels=True).SOPInstanceUID)
            timeout = max(3.0, results_deadline - time.monotonic())
            arrived = _wait(f"{report_dcm.name} arriving at the receiving node", "routing", timeout,
                            lambda: _find_in_archive(receiver_dir, sop))
            print(f"    {report_dcm.name} arrived at {RECEIVER_AE}: {arrived}")
            said: list[str] = [""]

            def recorded() -> bool:
                ok, why = routing_delivered(_api(node_url, token, f"/api/jobs/{job_id}").get("routing"))
                said[0] = why
                return ok
            try:
                _wait("the job's routing record saying delivered", "routing", max(3.0, results_deadline - time.monotonic()),
                      recorded)
            except StepFailed as exc:
                raise StepFailed("routing", f"{exc.message}: {said[0]}") from None
            print(f"    job {job_id} routing: {_api(node_url, token, f'/api/jobs/{job_id}')['routing']}")

        with tour.step("routing", f"the QA report routed to the receiving node ({RECEIVER_AE})"):
            routing_step()

        def measures_step() -> None:
            from stability_collector.localgraphite import whisper_value_at

            from .results.measures import parse_measures
            tz = dt.datetime.now().astimezone().tzinfo
            assert tz is not None
            mset = parse_measures((output / "measures.json").read_text(), tz, "measures.json")
            expected = {}
            for m in mset.measures:
                when = m.time or mset.time
                if when is None:
                    continue
                expected[f"{mset.prefix}.{m.name}" if mset.prefix else m.name] = (m.value, int(when.timestamp()))
            missing: dict[str, Any] = {}

            def in_whisper() -> bool:
                missing.clear()
                for metric, (value, ts) in expected.items():
                    path = graphite.whisper_path(metric)
                    try:
                        got = whisper_value_at(path, ts) if path.exists() else None
                    except Exception:            # carbon is creating the file right now
                        got = None
                    if got is None or not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9):
                        missing[metric] = got
                return not missing
            try:
                _wait(f"{len(expected)} fBIRN datapoints in whisper", "measures",
                      max(3.0, results_deadline - time.monotonic()), in_whisper)
            except StepFailed as exc:
                example = next(iter(missing.items()), None)
                raise StepFailed("measures", f"{exc.message}: {len(missing)} missing, e.g. {example}") from None
            snr = f"{mset.prefix}.snr"
            print(f"    {len(expected)} datapoints in whisper at {tour.facts['acquired'].isoformat(sep=' ')}, "
                  f"e.g. {snr} = {expected[snr][0]:g}")
            tour.facts["fbirn_prefix"] = mset.prefix
            entries = _api(node_url, token, f"/api/jobs/{job_id}").get("measures")
            ok, why = measures_delivered(entries)
            if not ok:
                raise StepFailed("measures", f"the datapoints are in whisper but the job's record disagrees: {why}")
            print(f"    job {job_id} measures record: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")

        with tour.step("measures", "the fBIRN measures of the job in whisper at the acquisition time"):
            measures_step()

        with tour.step("qa", "the QA evaluator (hops-qa evaluate, hops-qa report)"):
            qa_dir = tour.base / "qa"
            qa_dir.mkdir(parents=True, exist_ok=True)
            common = ["--graphite", graphite.line_address, "--graphite-web", graphite.web_url,
                      "--state-dir", str(qa_dir / "state")]
            evaluate = subprocess.run([tour.python, "-m", "stability_collector.qa.cli", "evaluate", *common],
                                      capture_output=True, text=True, timeout=120 * t)
            if evaluate.returncode != 0:
                raise StepFailed("qa", f"hops-qa evaluate exited {evaluate.returncode}: "
                                       f"{(evaluate.stderr or evaluate.stdout).strip()[-800:]}")
            lines = evaluate.stdout.strip().splitlines()
            for line in lines[-4:]:
                print("    " + line)
            qa_report = qa_dir / f"hops-qa-{PHANTOM_STATION}.html"
            report_run = subprocess.run([tour.python, "-m", "stability_collector.qa.cli", "report", *common[2:],
                                         "--scanner", PHANTOM_STATION,
                                         "--out", str(qa_report)],
                                        capture_output=True, text=True, timeout=120 * t)
            if report_run.returncode != 0 or not qa_report.exists():
                raise StepFailed("qa", f"hops-qa report exited {report_run.returncode}: "
                                       f"{(report_run.stderr or report_run.stdout).strip()[-800:]}")
            print("    " + report_run.stdout.strip().splitlines()[-1])
            tour.facts["qa_report"] = qa_report

        with tour.step("links", "the pointers below answer (web UI login page, graphite-web graphs)"):
            _check_links(tour, node_url, graphite.web_url, snr_graph_url(graphite.web_url))
        elapsed = time.monotonic() - tour.started
        _print_pointers(tour, node_url, graphite.web_url, snr_graph_url(graphite.web_url))
        print(f"\nTour done in {elapsed:.0f} s: every step passed.")
        if serve:
            print("Everything keeps running; press Ctrl-C to stop it all.", flush=True)
            while True:
                time.sleep(3600)
        return 0
    except StepFailed as exc:
        print(f"\nFAILED: step '{exc.step}': {exc.message}", flush=True)
        print(f"logs: {logs}/ (node.log, receiver.log), {tour.base / 'graphite' / 'storage' / 'log'}/")
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the tour started", flush=True)
        return 130
    finally:
        tour.cleanup()


def _graph(web_url: str, target: str, title: str, frm: str = "-400d") -> str:
    query = urllib.parse.urlencode({"target": target, "title": title, "from": frm, "width": 900, "height": 360,
                                    "lineMode": "connected", "lineWidth": 2, "bgcolor": "white",
                                    "fgcolor": "black", "drawNullAsZero": "false"})
    return f"{web_url}/render?{query}"


def _graph_urls(tour: Tour, web_url: str) -> dict[str, str]:
    fbirn = tour.facts.get("fbirn_prefix") or f"hops.stability.{PHANTOM_STATION}.*.fbirn"
    return {"fbirn": _graph(web_url, f"{fbirn}.{{snr,sfnr}}", "fBIRN phantom QA", "-3d"),
            "node": _graph(web_url, "hops.magickbox.demo.*.*", "magickbox node", "-1h")}


def _check_links(tour: Tour, node_url: str, web_url: str, snr_url: str) -> None:
    """GET the web UI's login page and every graph URL: StepFailed('links') unless they
    answer 200 (graphs: a PNG)."""
    urls = {"web UI": f"{node_url}/ui/login", "SNR graph": snr_url, **_graph_urls(tour, web_url)}
    for name, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                body = resp.read()
                kind = resp.headers.get("Content-Type", "")
        except (OSError, urllib.error.HTTPError) as exc:
            raise StepFailed("links", f"{name} ({url}) does not answer: {exc}") from None
        if url != urls["web UI"] and not body.startswith(b"\x89PNG"):
            raise StepFailed("links", f"{name} ({url}) is not a PNG ({kind})")
    print(f"    {len(urls)} links answer (the graphs render as PNG)")


def _print_pointers(tour: Tour, node_url: str, web_url: str, snr_url: str) -> None:
    facts = tour.facts
    print("\nWhere to look:")
    print(f"  Web UI:        {node_url}/ui  (log in with the admin token {facts['token']})")
    print(f"  The QA job:    {node_url}/ui/jobs/{facts['job_id']}")
    print(f"  REST API:      curl -H 'Authorization: Bearer {facts['token']}' {node_url}/api/jobs/{facts['job_id']}")
    print(f"  Graph, sample scanners' SNR (graphite-web): {snr_url}")
    graphs = _graph_urls(tour, web_url)
    print(f"  Graph, phantom fBIRN SNR/SFNR:  {graphs['fbirn']}")
    print(f"  Graph, node metrics:            {graphs['node']}")
    print(f"  Browse all metrics:             {web_url}/")
    print(f"  QA bucket report (this scan):   {facts['output'] / 'report.pdf'}")
    print(f"  QA report (hops-qa, {PHANTOM_STATION}):      {facts['qa_report']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo.sh", description="The HOPS full tour on embedded defaults.")
    ap.add_argument("--dir", default=".hops-demo", help="state directory (default .hops-demo; its tour "
                                                         "sub-directories are replaced)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--serve", dest="serve", action="store_true", default=None,
                       help="keep everything running after the tour until Ctrl-C (default on a terminal)")
    group.add_argument("--no-serve", dest="serve", action="store_false", help="stop after the tour")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout")
    args = ap.parse_args(argv)
    serve = args.serve if args.serve is not None else (sys.stdin.isatty() and sys.stdout.isatty())

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C must work even when started from a shell that ignores SIGINT for background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    os.umask(0o027)
    return run_tour(Path(args.dir), serve=serve, timeout_scale=args.timeout_scale)


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
