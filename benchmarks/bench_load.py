"""The node under load: concurrent senders, a backlog of queued jobs, concurrent API clients.

Three parts, each beside a reference measured in the same run on the same machine:

**receive** — ``--senders`` (10) dcmtk ``storescu`` processes at once, each sending its own
study of ``--images`` (500) MR images of ``--size-kb`` KB to one ``magickbox serve`` node
(called AE = a no-op process bucket, so every study makes a job).  Figures: throughput
(all images / wall time from the first sender's start to the last one's end), duration of
each association (p50/p95/max), per-image latency (``Sending Store Request`` ->
``Received Store Response`` in storescu's millisecond log), peak RSS of the node
(``VmHWM``) and of the node with its children (sampled).  Reference: the same senders to
dcmtk ``storescp --fork``, plain and made durable (fsync of each file and its directory,
``fsync_preload.c``, as in ``bench_receive.py``).  Target: magickbox >= 0.5x durable
storescp.  Afterwards it checks that every sent instance is archived exactly once, nothing
else is, and every study made exactly one job, which succeeded.

**jobs** — ``--jobs`` (1,000) single-instance studies are archived (sent to the node's own
AE title: no jobs), then ``magickbox backfill`` queues one no-op job per study at once
while the node runs with a real gearmand (sqlite queue) and a separate ``magickbox
worker`` process (bucket concurrency ``--concurrency``, default the CPU count).  Figures:
time to drain (backfill start -> last job committed), jobs/s, queue-to-start latency
(job created -> started; with all jobs queued at once it grows with the backlog), per-job
overhead, node and worker peak RSS.  Reference: the bucket's ``work.sh`` run ``--jobs``
times straight with ``subprocess`` at the same concurrency.  Target: overhead per job
<= 1 s (``bench_jobs.py``).  Checks every job succeeded, one per study.

**api** — on the node of the jobs part (``--jobs`` finished jobs): ``--clients`` (16)
client processes at once, each ``--requests`` (200) keep-alive GETs with a read token,
cycling through the job list (first page, status filter, a page further back), a job's
detail and the node status; meanwhile one admin client re-runs ``--mutations`` (20) jobs
(``POST /api/jobs/<id>/rerun``, expects 201).  Figures: req/s, latency p50/p95/p99,
errors (target 0), the node's peak RSS during the load.  Reference: the same clients
against a bare uvicorn app (same server settings) returning the node's own response
bodies, pre-rendered: what the node adds on top of its HTTP stack.

    python benchmarks/bench_load.py [--parts receive,jobs,api] [--senders 10] [--images 500]
        [--size-kb 130] [--jobs 1000] [--concurrency N] [--clients 16] [--requests 200]
        [--mutations 20] [--quick]

Prints a summary and a final ``RESULT {json}`` line (``benchmarks/benchlib.py``).
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))            # MagickboxProcess, process_bucket

import pydicom  # noqa: E402
from bench_receive import ENV, MAGICKBOX, build_fsync_shim, generate_study, stop  # noqa: E402
from benchlib import TreeMemory, emit, percentile, reset_peak_rss, row, rss_mb, wait_until  # noqa: E402
from dicom_helpers import MagickboxProcess, process_bucket  # noqa: E402

from magickbox.api.tokens import TokenStore  # noqa: E402
from magickbox.layout import DataLayout  # noqa: E402
from magickbox.model import FINAL_STATUSES  # noqa: E402
from stability_collector.localgraphite import free_port, wait_for_port  # noqa: E402

NOOP_SCRIPT = "#!/bin/sh\nprintf '[{\"success\": \"success\"}]\\n' > \"$2/proc.json\"\n"
#: storescu's log with millisecond epoch timestamps (-lc replaces -v)
STORESCU_LOG_CONFIG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%q} %m%n
"""


def log(text: str) -> None:
    print(text, flush=True)


# -- studies ------------------------------------------------------------------------------------
class Study:
    def __init__(self, uid: str, files: list[Path], sop_uids: list[str]):
        self.uid, self.files, self.sop_uids = uid, files, sop_uids


def generate_studies(directory: Path, studies: int, images: int, size_kb: int) -> list[Study]:
    """``studies`` studies of ``images`` MR images of about ``size_kb`` KB each (bench_receive's
    generator, fresh UIDs), one series each, one directory per study."""
    out = []
    for s in range(studies):
        files = generate_study(directory / f"study{s:04d}", images, size_kb)
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        out.append(Study(str(headers[0].StudyInstanceUID), files, [str(h.SOPInstanceUID) for h in headers]))
    return out


# -- concurrent senders -----------------------------------------------------------------------
class SenderRun:
    """The outcome of one round of concurrent storescu senders."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.durations: list[float] = []
        self.latencies: list[float] = []
        self.acknowledged = 0


def send_concurrently(port: int, called: str, studies: list[Study], logs: Path) -> SenderRun:
    """Start one storescu per study at the same moment; wait for all of them."""
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / "storescu-log.cfg"
    config.write_text(STORESCU_LOG_CONFIG)
    run = SenderRun()
    results: list[tuple[float, float, int, Path]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(studies))

    def one(index: int, study: Study) -> None:
        log_path = logs / f"sender{index:02d}.log"
        barrier.wait()
        start = time.perf_counter()
        with open(log_path, "wb") as out:
            rc = subprocess.run(["storescu", "-lc", str(config), "-aet", f"LOAD{index:02d}", "-aec", called,
                                 "127.0.0.1", str(port), *map(str, study.files)],
                                env=ENV, stdout=out, stderr=subprocess.STDOUT).returncode
        with lock:
            results.append((start, time.perf_counter(), rc, log_path))

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(studies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [(rc, p) for _, _, rc, p in results if rc != 0]
    if failed:
        rc, path = failed[0]
        raise SystemExit(f"storescu to {called} failed (exit {rc}): {path.read_text(errors='replace')[-2000:]}")
    run.wall = max(end for _, end, _, _ in results) - min(start for start, _, _, _ in results)
    run.durations = [end - start for start, end, _, _ in results]
    for _, _, _, path in results:
        sent_at = None
        for line in path.read_text(errors="replace").splitlines():
            stamp, _, message = line.partition(" ")
            if message.startswith("Sending Store Request"):
                sent_at = float(stamp)
            elif message.startswith("Received Store Response") and sent_at is not None:
                run.latencies.append(float(stamp) - sent_at)
                if "(Success)" in message:
                    run.acknowledged += 1
                sent_at = None
    return run


def storescp_fork(out: Path, shim: Path | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(ENV)
    if shim is not None:
        env.update(LD_PRELOAD=str(shim), FSYNC_PRELOAD_DIR=str(out))
    proc = subprocess.Popen(["storescp", "--fork", "-aet", "PACS", "-od", str(out), "+B", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc, what="storescp --fork")
    return proc, port


def part_receive(args: argparse.Namespace, base: Path) -> list[dict]:
    total = args.senders * args.images
    log(f"\n== receive: {args.senders} concurrent storescu x {args.images} images of {args.size_kb} KB "
        f"({total} instances) ==")
    started = time.perf_counter()
    studies = generate_studies(base / "senders", args.senders, args.images, args.size_kb)
    log(f"generated in {time.perf_counter() - started:.1f} s")
    shim = build_fsync_shim(base)
    runs: dict[str, SenderRun] = {}
    peaks: dict[str, float] = {}
    expected = {sop for s in studies for sop in s.sop_uids}
    for name, durable in (("storescp --fork", False), ("durable storescp --fork", True)):
        target = base / name.replace(" ", "_")
        proc, port = storescp_fork(target, shim if durable else None)
        try:
            with TreeMemory(proc.pid) as memory:
                runs[name] = send_concurrently(port, "PACS", studies, base / "logs" / name.replace(" ", "_"))
            peaks[name] = memory.peak_mb
        finally:
            stop(proc)
        stored = [p.name.split(".", 1)[1] for p in target.iterdir() if p.is_file()]
        if Counter(stored) != Counter(expected):
            raise SystemExit(f"{name} stored {len(stored)} files, expected {total}")
        shutil.rmtree(target, ignore_errors=True)
        log(f"  {name:<24} {total / runs[name].wall:7.0f} img/s ({runs[name].wall:.2f} s)")
    node = MagickboxProcess(base / "receive-node", quiet_seconds=2)
    process_bucket(DataLayout.of(node.data_dir).buckets, "NOOP", NOOP_SCRIPT)
    node.start()
    try:
        assert node.proc is not None
        with TreeMemory(node.proc.pid) as memory:
            runs["magickbox"] = send_concurrently(node.dicom_port, "NOOP", studies, base / "logs" / "magickbox")
            jobs = node.wait_final(len(studies), timeout=120 + total / 20)
            node_peak = rss_mb(node.proc.pid)          # receiving and running the studies' jobs
        archived = node.archived()
    finally:
        node.stop()
    tree_peak = memory.peak_mb
    mb = runs["magickbox"]
    log(f"  {'magickbox':<24} {total / mb.wall:7.0f} img/s ({mb.wall:.2f} s)")
    # verification: every instance archived exactly once, one successful job per study
    counts = Counter(p.stem for p in archived)
    once = sum(1 for sop in expected if counts.get(sop) == 1)
    extra = sum(n for sop, n in counts.items() if sop not in expected) + sum(n - 1 for n in counts.values() if n > 1)
    per_study = Counter(j.get("study_uid") for j in jobs)
    one_job = sum(1 for s in studies if per_study.get(s.uid) == 1)
    good_jobs = sum(1 for j in jobs if j["status"] == "success" and j["instance_count"] == args.images)
    if mb.acknowledged != total:
        raise SystemExit(f"magickbox acknowledged {mb.acknowledged} of {total} instances")
    log(f"  verified: {once}/{total} archived exactly once ({extra} extra copies), {one_job}/{len(studies)} "
        f"studies with exactly one job, {good_jobs} successful jobs of {args.images} instances, "
        f"{len(jobs)} jobs in all")
    ref, plain = runs["durable storescp --fork"], runs["storescp --fork"]
    rate = {k: total / v.wall for k, v in runs.items()}
    ratio = rate["magickbox"] / rate["durable storescp --fork"]
    label = f"receive {args.senders}x{args.images} img ({args.size_kb} KB)"
    rows = [
        row(f"{label}: throughput", round(rate["magickbox"]), "img/s",
            f"durable storescp --fork {rate['durable storescp --fork']:.0f} img/s", ratio, ">= 0.5x", ratio >= 0.5),
        row(f"{label}: throughput vs plain storescp", round(rate["magickbox"]), "img/s",
            f"storescp --fork {rate['storescp --fork']:.0f} img/s (acks before disk)",
            rate["magickbox"] / rate["storescp --fork"]),
    ]
    for q, name in ((50, "p50"), (95, "p95"), (100, "max")):
        ours, theirs = percentile(mb.durations, q), percentile(ref.durations, q)
        rows.append(row(f"{label}: association duration {name}", round(ours, 2), "s",
                        f"durable storescp --fork {theirs:.2f} s", ours / theirs))
    for q, name in ((50, "p50"), (95, "p95"), (99, "p99")):
        ours, theirs = percentile(mb.latencies, q), percentile(ref.latencies, q)
        rows.append(row(f"{label}: per-image latency {name}", round(ours * 1000, 1), "ms",
                        f"durable storescp --fork {theirs * 1000:.1f} ms", ours / theirs if theirs else None))
    rows += [
        row(f"{label}: node peak RSS (VmHWM)", round(node_peak), "MB",
            f"storescp --fork tree {peaks['durable storescp --fork']:.0f} MB (sampled)"),
        row(f"{label}: node + job processes peak RSS (sampled)", round(tree_peak), "MB"),
        row(f"{label}: instances archived exactly once", once, "instances", None, None,
            f"= {total}, 0 extra", once == total and extra == 0),
        row(f"{label}: studies with exactly one successful job", min(one_job, good_jobs), "studies", None, None,
            f"= {len(studies)}", one_job == good_jobs == len(studies) == len(jobs)),
    ]
    log(f"  association p50/p95/max: magickbox {percentile(mb.durations, 50):.2f}/{percentile(mb.durations, 95):.2f}/"
        f"{max(mb.durations):.2f} s, durable storescp {percentile(ref.durations, 50):.2f}/"
        f"{percentile(ref.durations, 95):.2f}/{max(ref.durations):.2f} s, plain {percentile(plain.durations, 50):.2f} s")
    log(f"  ratio magickbox / durable storescp --fork: {ratio:.2f}x (target >= 0.5)")
    log(f"  node peak RSS {node_peak:.0f} MB, node + children {tree_peak:.0f} MB (sampled)")
    return rows


# -- queued jobs ---------------------------------------------------------------------------------
def direct_noop_runs(script: Path, count: int, concurrency: int, scratch: Path) -> float:
    """Seconds to run the bucket's work.sh ``count`` times with subprocess, ``concurrency``
    at once, each with its own input/output directories (as the runner passes them)."""
    for i in range(count):
        (scratch / f"out{i}").mkdir(parents=True)
    (scratch / "in").mkdir()
    (scratch / "mem").mkdir()

    def one(i: int) -> None:
        subprocess.run([str(script), str(scratch / "in"), str(scratch / f"out{i}"), str(scratch / "mem")],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - started


def job_rows(db_path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT id, study_uid, status, created, started, finished, committed FROM jobs"
                            " ORDER BY id").fetchall()
    finally:
        conn.close()


class JobsNode:
    """The node of the jobs and api parts: gearmand, ``magickbox serve --no-worker`` and a
    separate ``magickbox worker``."""

    def __init__(self, base: Path, concurrency: int):
        self.base = base
        gport = free_port()
        self.gearmand = subprocess.Popen(["gearmand", "--listen=127.0.0.1", f"--port={gport}", "-q", "libsqlite3",
                                          f"--libsqlite3-db={base / 'queue.sqlite'}", "--threads=2"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(gport, proc=self.gearmand, what="gearmand")
        self.node = MagickboxProcess(base / "jobs-node", quiet_seconds=1,
                                     config={"gearman": {"servers": [f"127.0.0.1:{gport}"]},
                                             # the node's own AE title archives only for callers named here
                                             "dicom": {"access": {"MAGICKBOX": {"calling_ae_titles": ["ARCHIVER"]}}}},
                                     extra_args=["--no-worker"])
        self.layout = DataLayout.of(self.node.data_dir)
        self.bucket = process_bucket(self.layout.buckets, "NOOP", NOOP_SCRIPT, concurrency=concurrency)
        self.node.start()
        self.worker = subprocess.Popen([MAGICKBOX, "worker", "--gearman", f"127.0.0.1:{gport}", "--data-dir",
                                        str(self.node.data_dir), "--worker-id", "bench-worker"],
                                       stdout=open(base / "worker.log", "ab"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop(self.worker)
        self.node.stop()
        stop(self.gearmand)


def part_jobs(args: argparse.Namespace, base: Path, node: JobsNode) -> list[dict]:
    n, c = args.jobs, args.concurrency
    log(f"\n== jobs: {n} queued no-op jobs (process runner, concurrency {c}, gearmand, separate worker) ==")
    studies = generate_studies(base / "small", n, 1, 8)
    config = base / "storescu-log.cfg"
    config.write_text(STORESCU_LOG_CONFIG)
    files = [str(f) for s in studies for f in s.files]
    chunk = max(1, (len(files) + 3) // 4)
    with ThreadPoolExecutor(4) as pool:          # archive them: the node's own AE title makes no jobs
        codes = list(pool.map(lambda part: subprocess.run(
            ["storescu", "-aet", "ARCHIVER", "-aec", "MAGICKBOX", "127.0.0.1", str(node.node.dicom_port), *part],
            env=ENV, capture_output=True, text=True), [files[i:i + chunk] for i in range(0, len(files), chunk)]))
    if any(c.returncode for c in codes):
        raise SystemExit(f"storescu to MAGICKBOX failed: {[c.stderr[-1000:] for c in codes if c.returncode]}")
    wait_until(lambda: len(node.node.archived()) >= n, 120, 0.5, f"{n} archived studies")
    assert node.node.proc is not None
    pids = {"node": node.node.proc.pid, "worker": node.worker.pid}
    for pid in pids.values():
        reset_peak_rss(pid)
    started_wall = time.time()
    with TreeMemory(node.worker.pid) as worker_tree:
        t = time.perf_counter()
        backfill = subprocess.run([MAGICKBOX, "backfill", "NOOP", "--data-dir", str(node.node.data_dir),
                                   "--no-progress"], capture_output=True, text=True)
        queue_seconds = time.perf_counter() - t
        if backfill.returncode != 0:
            raise SystemExit(f"backfill failed: {backfill.stderr[-2000:]}")

        def drained() -> bool:
            rows = job_rows(node.layout.database)
            return len(rows) >= n and all(r["status"] in FINAL_STATUSES for r in rows)
        wait_until(drained, 60 + n * 2, 0.5, f"{n} jobs to finish")
        peaks = {k: rss_mb(pid) for k, pid in pids.items()}
    jobs = job_rows(node.layout.database)
    drain = max(r["committed"] for r in jobs) - started_wall
    waits = [r["started"] - r["created"] for r in jobs]
    ok = sum(1 for r in jobs if r["status"] == "success")
    per_study = Counter(r["study_uid"] for r in jobs)
    one_job = sum(1 for s in studies if per_study.get(s.uid) == 1)
    reference = direct_noop_runs(node.bucket / "work.sh", n, c, base / "direct")
    overhead = (drain - reference) * c / n
    log(f"  backfill queued {len(jobs)} jobs in {queue_seconds:.2f} s; drained in {drain:.2f} s "
        f"({n / drain:.1f} jobs/s); the same work.sh run {n}x directly: {reference:.2f} s ({n / reference:.0f}/s)")
    log(f"  queue-to-start p50/p95/max {percentile(waits, 50):.2f}/{percentile(waits, 95):.2f}/{max(waits):.2f} s; "
        f"overhead per job {overhead:.3f} s of a worker slot")
    log(f"  {ok}/{len(jobs)} succeeded, {one_job}/{n} studies with exactly one job; peak RSS node {peaks['node']:.0f} MB,"
        f" worker {peaks['worker']:.0f} MB, worker + job processes {worker_tree.peak_mb:.0f} MB (sampled)")
    label = f"{n} queued no-op jobs (concurrency {c})"
    ref_text = f"work.sh run {n}x by subprocess, {c} at once: {reference:.2f} s"
    return [
        row(f"{label}: time to drain", round(drain, 2), "s", ref_text, drain / reference),
        row(f"{label}: throughput", round(n / drain, 1), "jobs/s", f"{n / reference:.0f} runs/s directly",
            reference / drain),
        row(f"{label}: overhead per job (worker slot s)", round(overhead, 3), "s", None, None, "<= 1 s",
            overhead <= 1),
        row(f"{label}: backfill queues them", round(queue_seconds, 2), "s"),
        *[row(f"{label}: queue-to-start latency {name}", round(percentile(waits, q), 2), "s")
          for q, name in ((50, "p50"), (95, "p95"), (100, "max"))],
        row(f"{label}: node peak RSS (VmHWM)", round(peaks["node"]), "MB"),
        row(f"{label}: worker peak RSS (VmHWM)", round(peaks["worker"]), "MB"),
        row(f"{label}: worker + job processes peak RSS (sampled)", round(worker_tree.peak_mb), "MB"),
        row(f"{label}: jobs succeeded, one per study", min(ok, one_job), "jobs", None, None, f"= {n}",
            ok == one_job == n == len(jobs)),
    ]


# -- API under concurrent clients ---------------------------------------------------------------------
def api_client(port: int, token: str, paths: list[str], method: str, start_at: float,
               pause: float) -> tuple[list[float], list[int], int, float]:
    """Send ``paths`` one after another on a keep-alive connection from ``start_at`` (epoch
    s); (latencies s, status codes, errors, end epoch s)."""
    while time.time() < start_at:
        time.sleep(0.001)
    headers = {"Authorization": f"Bearer {token}"}
    latencies, codes, errors = [], [], 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for path in paths:
        t = time.perf_counter()
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            codes.append(response.status)
            latencies.append(time.perf_counter() - t)
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        if pause:
            time.sleep(pause)
    conn.close()
    return latencies, codes, errors, time.time()


def read_paths(job_ids: list[int], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    kinds = [lambda: "/api/jobs?limit=50", lambda: f"/api/jobs/{rng.choice(job_ids)}", lambda: "/api/status",
             lambda: "/api/jobs?limit=50&status=success", lambda: f"/api/jobs?limit=50&before={rng.choice(job_ids)}"]
    return [kinds[(seed + i) % len(kinds)]() for i in range(count)]


class LoadOutcome:
    def __init__(self, results: list, mutation: tuple | None, start_at: float):
        self.latencies = [x for r in results for x in r[0]]
        codes = [x for r in results for x in r[1]]
        self.requests = len(codes) + sum(r[2] for r in results)
        self.errors = sum(r[2] for r in results) + sum(1 for code in codes if code != 200)
        self.wall = max(r[3] for r in results) - start_at
        self.rate = self.requests / self.wall
        self.mutation = mutation


def run_clients(port: int, token: str, job_ids: list[int], clients: int, requests: int,
                mutation: tuple[str, list[str]] | None = None) -> LoadOutcome:
    """``clients`` processes at once (fork), each ``requests`` reads; optionally one more
    process sending ``mutation`` = (admin token, POST paths) spread over the run."""
    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 1.0
    with ctx.Pool(clients + (1 if mutation else 0)) as pool:
        pending = [pool.apply_async(api_client, (port, token, read_paths(job_ids, requests, i), "GET", start_at, 0))
                   for i in range(clients)]
        extra = None
        if mutation:
            extra = pool.apply_async(api_client, (port, mutation[0], mutation[1], "POST", start_at + 0.2, 0.1))
        results = [p.get(timeout=600) for p in pending]
        mutated = extra.get(timeout=600) if extra else None
    return LoadOutcome(results, mutated, start_at)


REFERENCE_APP = '''
import json, socket, sys
import uvicorn
bodies = {k: v.encode() for k, v in json.load(open(sys.argv[1])).items()}

async def app(scope, receive, send):
    path = scope["path"]
    query = scope["query_string"].decode()
    kind = "detail" if path.startswith("/api/jobs/") else "status" if path == "/api/status" else (
        "filtered" if "status=" in query else "before" if "before=" in query else "list")
    body = bodies[kind]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)   # TCP_NODELAY, as the node
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[2])))
sock.listen(128)
config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
uvicorn.Server(config).run(sockets=[sock])
'''


def part_api(args: argparse.Namespace, base: Path, node: JobsNode) -> list[dict]:
    log(f"\n== api: {args.clients} concurrent clients x {args.requests} requests, {args.mutations} admin re-runs ==")
    mb = node.node
    assert mb.proc is not None and mb.token is not None
    read_token = TokenStore(node.layout.api_tokens).create("bench-load-read", "read")
    job_ids = [r["id"] for r in job_rows(node.layout.database)]
    if not job_ids:
        raise SystemExit("the api part needs the jobs part's jobs (--parts jobs,api)")
    # the node's own bodies for the reference server
    bodies = {}
    conn = http.client.HTTPConnection("127.0.0.1", mb.http_port, timeout=60)
    for kind, path in (("list", "/api/jobs?limit=50"), ("detail", f"/api/jobs/{job_ids[len(job_ids) // 2]}"),
                       ("status", "/api/status"), ("filtered", "/api/jobs?limit=50&status=success"),
                       ("before", f"/api/jobs?limit=50&before={job_ids[len(job_ids) // 2]}")):
        conn.request("GET", path, headers={"Authorization": f"Bearer {read_token}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status}")
        bodies[kind] = body.decode()
    conn.close()
    (base / "bodies.json").write_text(json.dumps(bodies))
    (base / "reference_app.py").write_text(REFERENCE_APP)
    rport = free_port()
    reference = subprocess.Popen([sys.executable, str(base / "reference_app.py"), str(base / "bodies.json"),
                                  str(rport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(rport, proc=reference, what="reference uvicorn app")
        ref = run_clients(rport, read_token, job_ids, args.clients, args.requests)
    finally:
        stop(reference)
    reset_peak_rss(mb.proc.pid)
    rerun = [f"/api/jobs/{job_id}/rerun" for job_id in random.Random(7).sample(job_ids, min(args.mutations,
                                                                                             len(job_ids)))]
    ours = run_clients(mb.http_port, read_token, job_ids, args.clients, args.requests, (mb.token, rerun))
    peak = rss_mb(mb.proc.pid)
    assert ours.mutation is not None
    m_lat, m_codes, m_errors, _ = ours.mutation
    m_bad = m_errors + sum(1 for code in m_codes if code != 201)
    errors = ours.errors + m_bad
    log(f"  magickbox: {ours.requests} reads in {ours.wall:.2f} s = {ours.rate:.0f} req/s, p50/p95/p99 "
        f"{percentile(ours.latencies, 50) * 1000:.0f}/{percentile(ours.latencies, 95) * 1000:.0f}/"
        f"{percentile(ours.latencies, 99) * 1000:.0f} ms, {ours.errors} errors; {len(m_codes)} re-runs, "
        f"{m_bad} not 201, p50 {percentile(m_lat, 50) * 1000:.0f} ms; peak RSS {peak:.0f} MB")
    log(f"  bare uvicorn with the same bodies: {ref.rate:.0f} req/s, p50/p95/p99 "
        f"{percentile(ref.latencies, 50) * 1000:.0f}/{percentile(ref.latencies, 95) * 1000:.0f}/"
        f"{percentile(ref.latencies, 99) * 1000:.0f} ms, {ref.errors} errors")
    label = f"API {args.clients} clients x {args.requests} reads ({len(job_ids)} jobs)"
    rows = [row(f"{label}: throughput", round(ours.rate), "req/s", f"bare uvicorn, same bodies: {ref.rate:.0f} req/s",
                ours.rate / ref.rate)]
    for q, name in ((50, "p50"), (95, "p95"), (99, "p99")):
        a, b = percentile(ours.latencies, q), percentile(ref.latencies, q)
        rows.append(row(f"{label}: latency {name}", round(a * 1000, 1), "ms", f"bare uvicorn {b * 1000:.1f} ms", a / b))
    rows += [
        row(f"{label}: errors (reads + {len(rerun)} admin re-runs)", errors, "requests", None, None, "= 0",
            errors == 0),
        row(f"{label}: admin re-run latency p50", round(percentile(m_lat, 50) * 1000, 1), "ms"),
        row(f"{label}: node peak RSS (VmHWM)", round(peak), "MB"),
    ]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="receive,jobs,api", help="comma-separated: receive, jobs, api (api needs jobs)")
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size-kb", type=int, default=130)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--mutations", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a small smoke run (3x20 images, 40 jobs, 4x25 requests)")
    args = ap.parse_args()
    if args.quick:
        args.senders, args.images, args.size_kb, args.jobs = 3, 20, 20, 40
        args.clients, args.requests, args.mutations = 4, 25, 3
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    base = Path(tempfile.mkdtemp(prefix="hops-bench-load-"))
    rows: list[dict] = []
    try:
        if "receive" in parts:
            rows += part_receive(args, base)
        if parts & {"jobs", "api"}:
            node = JobsNode(base, args.concurrency)
            try:
                rows += part_jobs(args, base, node)
                if "api" in parts:
                    rows += part_api(args, base, node)
            finally:
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    failed = [r["figure"] for r in rows if r["met"] is False]
    emit("bench_load", rows, quick=args.quick,
         sizes={k: getattr(args, k) for k in ("senders", "images", "size_kb", "jobs", "concurrency", "clients",
                                              "requests", "mutations")})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
