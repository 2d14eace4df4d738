"""The job list of the REST API with 100,000 jobs in the store: latency of the first page,
of filtered pages and of regular-expression searches, printed beside the same query sent
straight to SQLite (Python's sqlite3, a ``REGEXP`` function with Python's ``re``).

A real ``magickbox serve`` runs on a data directory whose job store is filled with
100,000 finished jobs (40 senders, 5 buckets, 5 statuses).  Each query is timed over HTTP
(httpx, keep-alive, JSON decoded) as the median of ``--repeat`` runs after one warm-up;
target: every one <= 0.2 s on this machine.

    python benchmarks/bench_api_jobs.py [--jobs 100000] [--repeat 7]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_receive import MAGICKBOX, stop  # noqa: E402
from benchlib import emit, row  # noqa: E402

from magickbox.api.tokens import TokenStore  # noqa: E402
from magickbox.db import Database  # noqa: E402
from magickbox.layout import DataLayout  # noqa: E402
from stability_collector.localgraphite import free_port, wait_for_port  # noqa: E402

TARGET = 0.2
COLUMNS = ("id, bucket_ae, calling_ae, caller_ip, source, received, completed, series_count, instance_count, "
           "follow_up_of, status, created, started, finished, worker, exit_code, log_size, message, attempts, "
           "bucket_version, committed")
TEXT = ("'#' || id || ' ' || bucket_ae || ' ' || calling_ae || ' ' || caller_ip || ' ' || status || ' ' || source"
        " || ' ' || coalesce(worker, '') || ' ' || message")


def fill(path: Path, count: int) -> None:
    Database(path).close()                       # the node's schema
    rng = random.Random(1)
    now = time.time()
    statuses = ["success"] * 8 + ["failed", "partial", "timeout", "cancelled"]
    rows = []
    for i in range(count):
        received = now - (count - i) * 300
        status = rng.choice(statuses)
        rows.append((rng.choice(["ProcQA", "ProcRSI", "ProcFS", "ProcNQ", "ProcGrad"]),
                     f"SCANNER{rng.randint(1, 40)}", f"10.0.{rng.randint(0, 9)}.{rng.randint(1, 250)}",
                     f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(60)}", "dicom", received, received + 5, 3, 200,
                     json.dumps({"1.2.3": ["T1"]}), status, received + 5, received + 6, received + 60, "w-1",
                     0 if status == "success" else 1, 1234,
                     "counted" if status == "success" else f"exit code 1; proc.json: failed: step {i % 97}", 1,
                     "1.0", received + 61))
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO jobs (bucket_ae, calling_ae, caller_ip, study_uid, source, received, completed,"
                     " series_count, instance_count, classification, status, created, started, finished, worker,"
                     " exit_code, log_size, message, attempts, bucket_version, committed)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()


def median_time(fn, repeat: int) -> tuple[float, object]:
    result = fn()                                 # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="a smoke run (5,000 jobs, median of 3)")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.repeat = 5000, 3
    rows = []
    base = Path(tempfile.mkdtemp(prefix="hops-bench-api-"))
    data = base / "node"
    data.mkdir()
    started = time.perf_counter()
    fill(DataLayout.of(data).database, args.jobs)
    print(f"{args.jobs} jobs written in {time.perf_counter() - started:.1f} s")
    token = TokenStore(DataLayout.of(data).api_tokens).create("bench", "read")
    hport, dport = free_port(), free_port()
    node = subprocess.Popen([MAGICKBOX, "serve", "--data-dir", str(data), "--dicom-port", str(dport),
                             "--dicom-host", "127.0.0.1", "--http-port", str(hport), "--no-worker"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failures = 0
    try:
        wait_for_port(hport, proc=node, what="magickbox http", timeout=60)
        client = httpx.Client(base_url=f"http://127.0.0.1:{hport}", headers={"Authorization": f"Bearer {token}"},
                              timeout=60)
        t = time.perf_counter()
        client.get("/api/jobs", params={"limit": 50, "q": "no such text"}).raise_for_status()
        print(f"first search right after start (the node prepares its search text in the background): "
              f"{time.perf_counter() - t:.3f} s")
        direct = sqlite3.connect(f"file:{data / 'magickbox.sqlite'}?mode=ro", uri=True)
        direct.row_factory = sqlite3.Row
        direct.create_function("regexp", 2, lambda p, s: re.search(p, s, re.IGNORECASE) is not None,
                               deterministic=True)
        cases = [
            ("first page (50, newest)", {"limit": 50}, "", ()),
            ("status=failed, first page", {"limit": 50, "status": "failed"}, "WHERE status = ?", ("failed",)),
            ("bucket + sender, first page", {"limit": 50, "bucket": "ProcQA", "sender": "SCANNER7"},
             "WHERE bucket_ae = ? AND calling_ae = ?", ("ProcQA", "SCANNER7")),
            ("page 1000 (before=id)", {"limit": 50, "before": args.jobs // 2}, "WHERE id < ?", (args.jobs // 2,)),
            ("regex 'scanner7\\b' (common)", {"limit": 50, "q": r"scanner7\b"}, f"WHERE {TEXT} REGEXP ?",
             (r"scanner7\b",)),
            ("regex 'ProcQA.*step 42\\b' (rare)", {"limit": 50, "q": r"ProcQA.*step 42\b"},
             f"WHERE {TEXT} REGEXP ?", (r"ProcQA.*step 42\b",)),
            ("regex without a match (all rows)", {"limit": 50, "q": "no such text"}, f"WHERE {TEXT} REGEXP ?",
             ("no such text",)),
        ]
        print(f"\n{'query':<36} {'API s':>8} {'SQLite s':>9} {'API/SQLite':>10}  rows  target <= {TARGET} s")
        for name, params, where, sql_args in cases:
            def api() -> list:
                response = client.get("/api/jobs", params=params)
                response.raise_for_status()
                return response.json()

            def sql() -> list:
                rows = direct.execute(f"SELECT {COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?",
                                      (*sql_args, 51)).fetchall()
                return [dict(r) for r in rows[:50]]
            t_api, got = median_time(api, args.repeat)
            t_sql, want = median_time(sql, args.repeat)
            same = [j["id"] for j in got] == [r["id"] for r in want]     # type: ignore[union-attr]
            ok = t_api <= TARGET and same
            failures += not ok
            rows.append(row(f"job list, {args.jobs} jobs: {name}", round(t_api, 4), "s",
                            f"SQLite alone {t_sql:.4f} s", t_api / t_sql, f"<= {TARGET} s, same rows", ok))
            print(f"{name:<36} {t_api:>8.4f} {t_sql:>9.4f} {t_api / t_sql:>9.1f}x  {len(got):>4}  "   # type: ignore
                  f"{'OK' if ok else ('DIFFERENT ROWS' if not same else 'ABOVE TARGET')}")
        client.close()
    finally:
        stop(node)
        shutil.rmtree(base, ignore_errors=True)
    emit("bench_api_jobs", rows, quick=args.quick)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
