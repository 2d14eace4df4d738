"""Buckets on the queue: a real gearmand (sqlite queue), real podman through the docker
SDK, the process runner, status from exit code and proc.json, timeouts, network off,
and fault injection (gearmand / worker / node killed)."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study, process_bucket, storescu, write_bucket
from localpodman import IMAGE

CONTAINER_SCRIPT = """
echo "job start on $(hostname)"
if touch /input/forbidden 2>/dev/null; then echo yes > /output/input_writable; fi
f=$(find /input -name '*.dcm' | head -n 1)
if echo overwritten 2>/dev/null > "$f"; then echo yes > /output/input_file_writable; fi
find /input -name '*.dcm' | wc -l > /output/count.txt
n=$(cat /memory/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /memory/runs; echo $n > /output/run_number.txt
echo "done, run $n"
echo '[{"success": "success", "message": "counted"}]' > /output/proc.json
"""


def container_bucket(buckets: Path, ae: str, script: str, **run) -> Path:
    return write_bucket(buckets, ae, run={"runner": "container", "image": IMAGE,
                                          "command": ["/bin/sh", "-c", script], **run})






def node_with(tmp_path: Path, gearman: str | None, engine: str | None = None, worker: bool = True,
              quiet: float = 0.5) -> MagickboxProcess:
    data = tmp_path / "node"
    config: dict = {"data_dir": str(data), "worker": {"enabled": worker}}
    if gearman:
        config["gearman"] = {"servers": [gearman], "resubmit_after": 5}
    if engine:
        config["worker"]["engine"] = engine
    return MagickboxProcess(data, quiet_seconds=quiet, config=config)


def test_container_bucket_end_to_end(tmp_path, gearmand, podman):
    node = node_with(tmp_path, gearmand.address, podman.url)
    container_bucket(node.data_dir / "buckets", "ProcQA", CONTAINER_SCRIPT, timeout=60)
    node.start()
    try:
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "a", 4))
        first = node.wait_final(1)[0]
        storescu(node.dicom_port, "ProcQA", make_study(tmp_path / "b", 2))
        jobs = node.wait_final(2)
    finally:
        node.stop()
    assert [j["status"] for j in jobs] == ["success", "success"], jobs
    assert first["message"] == "counted" and first["exit_code"] == 0 and first["log_size"] > 0
    results = [node.data_dir / "jobs" / str(j["id"]) / "result" for j in jobs]
    assert (results[0] / "output" / "count.txt").read_text().strip() == "4"
    assert (results[1] / "output" / "count.txt").read_text().strip() == "2"
    assert not (results[0] / "output" / "input_writable").exists()        # /input is read-only
    assert not (results[0] / "output" / "input_file_writable").exists()   # so are its files (archive inodes)
    # /memory persists from one run to the next
    assert [(r / "output" / "run_number.txt").read_text().strip() for r in results] == ["1", "2"]
    log = (results[1] / "processing.log").read_text()
    assert "job start" in log and "done, run 2" in log
    info = json.loads((node.data_dir / "jobs" / str(jobs[0]["id"]) / "info.json").read_text())
    assert info["AETitleCalled"] == "ProcQA" and info["AETitleCaller"] == "SCANNER" and info["CallerIP"]
    assert podman.podman("ps", "-a", "--format", "{{.ID}}").stdout.strip() == ""   # containers removed


@pytest.mark.parametrize("script, status, message", [
    ("exit 3", "failed", "exit code 3"),
    ("echo '[{\"success\": \"success\"}]' > /output/proc.json; exit 1", "failed", "exit code 1"),
    ("true", "failed", "the bucket wrote no proc.json"),
    ("echo 'not json' > /output/proc.json", "failed", "proc.json is not valid JSON"),
    ("echo '{\"message\": \"no success key\"}' > /output/proc.json", "failed", "proc.json must be"),
    ("echo '[{\"success\": \"partial\", \"message\": \"2 of 3\"}]' > /output/proc.json", "partial", "2 of 3"),
    ("echo '[{\"success\": \"failed\", \"message\": \"today is Monday\"}]' > /output/proc.json", "failed",
     "today is Monday"),
])
def test_exit_code_and_proc_json_set_the_status(tmp_path, podman, script, status, message):
    """Run exactly as a worker does (container runner, real podman), without the queue."""
    from magickbox.buckets import load_bucket_info
    from magickbox.jobfiles import JobDir
    from magickbox.worker import run_attempt
    bucket = load_bucket_info(container_bucket(tmp_path / "buckets", "ProcX", script, timeout=60))
    jobdir = JobDir(tmp_path / "jobs" / "1")
    jobdir.prepare({"job": 1}, tmp_path / "nothing")
    outcome = run_attempt(jobdir, bucket, "test-worker", podman.url)
    assert (outcome.status, message in outcome.message) == (status, True), outcome
    assert jobdir.committed().status == status


def test_timeout_kills_the_container_and_marks_timeout(tmp_path, gearmand, podman):
    node = node_with(tmp_path, gearmand.address, podman.url)
    container_bucket(node.data_dir / "buckets", "ProcSlow", "echo sleeping; sleep 60", timeout=2)
    node.start()
    try:
        started = time.monotonic()
        storescu(node.dicom_port, "ProcSlow", make_study(tmp_path / "s", 1))
        job = node.wait_final(1, timeout=60)[0]
        elapsed = time.monotonic() - started
    finally:
        node.stop()
    assert job["status"] == "timeout" and "timeout of 2 s" in job["message"], job
    assert elapsed < 30
    assert "sleeping" in (node.data_dir / "jobs" / str(job["id"]) / "result" / "processing.log").read_text()
    assert podman.podman("ps", "-a", "--format", "{{.ID}}").stdout.strip() == ""


def test_container_has_no_network_by_default(tmp_path, podman):
    from magickbox.buckets import load_bucket_info
    from magickbox.jobfiles import JobDir
    from magickbox.worker import run_attempt
    host_ip = next(ip for ip in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
                   if ":" not in ip)
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()
    port = server.getsockname()[1]
    connections = []
    threading.Thread(target=lambda: connections.append(server.accept()), daemon=True).start()
    with socket.create_connection((host_ip, port), timeout=5):       # reachable from the host itself
        pass
    time.sleep(0.2)
    assert len(connections) == 1
    script = (f"ip addr > /output/interfaces.txt 2>&1; "
              f"if nc -w 3 {host_ip} {port} </dev/null; then echo reached; else echo blocked; fi > /output/net.txt; "
              "echo '[{\"success\": \"success\"}]' > /output/proc.json")
    bucket = load_bucket_info(container_bucket(tmp_path / "buckets", "ProcNet", script, timeout=60))
    jobdir = JobDir(tmp_path / "jobs" / "1")
    jobdir.prepare({"job": 1}, tmp_path / "nothing")
    outcome = run_attempt(jobdir, bucket, "test-worker", podman.url)
    server.close()
    assert outcome.status == "success"
    assert (jobdir.result / "output" / "net.txt").read_text().strip() == "blocked"
    assert host_ip not in (jobdir.result / "output" / "interfaces.txt").read_text()
    assert len(connections) == 1                                     # nothing arrived from the container


def test_process_runner_timeout_memory_and_kill(tmp_path):
    from magickbox.buckets import load_bucket_info
    from magickbox.jobfiles import JobDir
    from magickbox.worker import run_attempt
    slow = load_bucket_info(process_bucket(tmp_path / "buckets", "ProcSleep", "echo start; sleep 30\n", timeout=1))
    jobdir = JobDir(tmp_path / "jobs" / "1")
    jobdir.prepare({"job": 1}, tmp_path / "nothing")
    started = time.monotonic()
    outcome = run_attempt(jobdir, slow, "w", None)
    assert outcome.status == "timeout" and time.monotonic() - started < 15
    hog = load_bucket_info(process_bucket(
        tmp_path / "buckets", "ProcHog",
        "python3 -c 'x = bytearray(400 * 1024 * 1024)' || echo '[{\"success\": \"failed\", \"message\": "
        "\"out of memory\"}]' > \"$OUTPUT/proc.json\"\n", memory="200m", timeout=30))
    jobdir = JobDir(tmp_path / "jobs" / "2")
    jobdir.prepare({"job": 2}, tmp_path / "nothing")
    outcome = run_attempt(jobdir, hog, "w", None)
    assert outcome.status == "failed" and "out of memory" in outcome.message


def _runs(memory_dir: Path) -> list[str]:
    path = memory_dir / "runs.log"
    return path.read_text().split() if path.exists() else []


COUNTING = 'echo "$(basename $(dirname "$1"))" >> "$3/runs.log"; sleep {sleep}\n' \
           'echo \'[{{"success": "success"}}]\' > "$2/proc.json"\n'


def test_gearmand_killed_with_jobs_queued_runs_every_job_exactly_once(tmp_path, gearmand):
    node = node_with(tmp_path, gearmand.address, worker=False)
    bucket = process_bucket(node.data_dir / "buckets", "ProcQ", COUNTING.format(sleep=0))
    node.start()
    worker = None
    try:
        for i in range(4):
            storescu(node.dicom_port, "ProcQ", make_study(tmp_path / f"s{i}", 1))
        node.wait_jobs(4)
        deadline = time.monotonic() + 30
        while gearmand.status().get("bucketProcQ", (0,))[0] < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gearmand.status()["bucketProcQ"][0] == 4        # queued in gearmand, no worker yet
        gearmand.kill()
        gearmand.start()                                        # same sqlite file: the jobs come back
        assert gearmand.status()["bucketProcQ"][0] == 4
        worker = subprocess.Popen([MAGICKBOX, "worker", "--gearman", gearmand.address, "--data-dir",
                                   str(node.data_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jobs = node.wait_final(4)
        time.sleep(6)            # past resubmit_after: nothing runs again
    finally:
        if worker:
            worker.terminate()
            worker.wait(10)
        node.stop()
    assert [j["status"] for j in jobs] == ["success"] * 4
    assert sorted(_runs(bucket / "memory")) == sorted(str(j["id"]) for j in jobs)    # each exactly once


def test_worker_killed_mid_job_is_rerun_and_finishes(tmp_path, gearmand):
    node = node_with(tmp_path, gearmand.address, worker=False)
    bucket = process_bucket(node.data_dir / "buckets", "ProcW", COUNTING.format(sleep=3))
    node.start()
    args = [MAGICKBOX, "worker", "--gearman", gearmand.address, "--data-dir", str(node.data_dir)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        storescu(node.dicom_port, "ProcW", make_study(tmp_path / "s", 1))
        deadline = time.monotonic() + 30
        while not _runs(bucket / "memory") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.jobs()[0]["status"] in ("queued", "running")
        first.kill()                                           # mid-job
        first.wait(10)
        second = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        job = node.wait_final(1, timeout=90)[0]
    finally:
        for p in (first, second):
            if p and p.poll() is None:
                p.terminate()
                p.wait(10)
        node.stop()
    assert job["status"] == "success" and job["attempts"] == 2, job
    assert _runs(bucket / "memory") == [str(job["id"])] * 2     # the killed run, then the re-run
    attempts = list((node.data_dir / "jobs" / str(job["id"]) / "attempts").iterdir())
    assert len(attempts) == 1 and not (attempts[0] / "outcome.json").exists()   # the dead one, kept


@pytest.mark.parametrize("embedded", [False, True], ids=["gearmand", "embedded"])
def test_node_restart_loses_and_doubles_no_job(tmp_path, request, embedded):
    gm = None
    if not embedded:
        from conftest import Gearmand
        gm = Gearmand(tmp_path / "gearmand").start()
    node = node_with(tmp_path, gm.address if gm else None)
    bucket = process_bucket(node.data_dir / "buckets", "ProcR", COUNTING.format(sleep=1))
    node.start()
    try:
        for i in range(3):
            storescu(node.dicom_port, "ProcR", make_study(tmp_path / f"s{i}", 1))
        node.wait_jobs(3)
        node.kill()                                            # with jobs queued and one running
        node.start()
        jobs = node.wait_final(3, timeout=90)
        time.sleep(6)
        jobs = node.jobs()
    finally:
        node.stop()
        if gm:
            gm.stop()
    assert [j["status"] for j in jobs] == ["success"] * 3, jobs
    runs = _runs(bucket / "memory")
    for j in jobs:
        # a job killed mid-run may have run twice; a queued one exactly once; results: one each
        assert 1 <= runs.count(str(j["id"])) <= 2
        assert (node.data_dir / "jobs" / str(j["id"]) / "result" / "outcome.json").exists()
    assert len(runs) <= 4


def test_two_workers_take_only_their_buckets(tmp_path, gearmand):
    node = node_with(tmp_path, gearmand.address, worker=False)
    for ae in ("ProcA", "ProcB"):
        process_bucket(node.data_dir / "buckets", ae, 'echo \'[{"success": "success"}]\' > "$2/proc.json"\n')
    node.start()
    workers = {}
    try:
        for ae in ("ProcA", "ProcB"):
            workers[ae] = subprocess.Popen([MAGICKBOX, "worker", "--gearman", gearmand.address, "--data-dir",
                                            str(node.data_dir), "--buckets", ae, "--worker-id", f"w-{ae}"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = gearmand.status()
            if status.get("bucketProcA", (0, 0, 0))[2] == 1 and status.get("bucketProcB", (0, 0, 0))[2] == 1:
                break
            time.sleep(0.2)
        for i in range(3):
            for ae in ("ProcA", "ProcB"):
                storescu(node.dicom_port, ae, make_study(tmp_path / f"{ae}{i}", 1))
        jobs = node.wait_final(6)
    finally:
        for p in workers.values():
            p.terminate()
            p.wait(10)
        node.stop()
    assert all(j["status"] == "success" for j in jobs)
    for j in jobs:
        assert j["worker"] == f"w-{j['bucket_ae']}", j


def test_infrastructure_failure_is_retried_then_failed(tmp_path):
    node = node_with(tmp_path, None, engine="unix:///nonexistent/engine.sock")
    write_bucket(node.data_dir / "buckets", "ProcE", run={"runner": "container", "image": IMAGE, "retries": 1})
    node.start()
    try:
        storescu(node.dicom_port, "ProcE", make_study(tmp_path / "s", 1))
        job = node.wait_final(1, timeout=60)[0]
    finally:
        node.stop()
    assert job["status"] == "failed" and "gave up after 2 attempt(s)" in job["message"]
    assert "container engine not reachable" in job["message"]


def test_backfill_runs_a_new_bucket_over_archived_studies(tmp_path):
    node = node_with(tmp_path, None)
    process_bucket(node.data_dir / "buckets", "ProcOld", 'echo \'[{"success": "success"}]\' > "$2/proc.json"\n')
    node.start()
    try:
        storescu(node.dicom_port, "ProcOld", make_study(tmp_path / "a", 2, StudyDate="20240105",
                                                          StudyDescription="HEAD routine"))
        storescu(node.dicom_port, "ProcOld", make_study(tmp_path / "b", 3, StudyDate="20250310",
                                                          StudyDescription="KNEE left"))
        storescu(node.dicom_port, "ProcOld", make_study(tmp_path / "c", 1, StudyDate="20250601",
                                                          StudyDescription="HEAD follow-up"))
        node.wait_final(3)
        new = process_bucket(node.data_dir / "buckets", "ProcNew",
                             'find "$1" -name "*.dcm" | wc -l > "$2/n"; echo \'[{"success": "success"}]\' > "$2/proc.json"\n')
        base = [MAGICKBOX, "backfill", "ProcNew", "--data-dir", str(node.data_dir), "--no-progress"]
        dry = subprocess.run(base + ["--dry-run", "--match", "HEAD"], capture_output=True, text=True, check=True)
        assert "would queue 2 study/studies" in dry.stdout
        assert len(node.jobs()) == 3
        since = subprocess.run(base + ["--since", "2025-01-01", "--until", "2025-05-01"], capture_output=True,
                               text=True, check=True)
        assert "queued 1 study/studies" in since.stdout
        subprocess.run(base, capture_output=True, text=True, check=True)
        jobs = node.wait_final(6, timeout=90)
        again = subprocess.run(base, capture_output=True, text=True, check=True)
        assert "queued 0 study/studies, skipped 3 already done" in again.stdout
        forced = subprocess.run(base + ["--force", "--match", "KNEE"], capture_output=True, text=True, check=True)
        assert "queued 1 study/studies" in forced.stdout
        jobs = node.wait_final(7, timeout=90)
    finally:
        node.stop()
    backfilled = [j for j in jobs if j["bucket_ae"] == "ProcNew"]
    assert len(backfilled) == 4 and all(j["status"] == "success" and j["source"] == "backfill" for j in backfilled)
    counts = sorted(int((node.data_dir / "jobs" / str(j["id"]) / "result" / "output" / "n").read_text())
                    for j in backfilled)
    assert counts == [1, 2, 3, 3]
    assert new.exists()


def test_an_attempt_after_a_killed_one_leaves_no_input_copy_or_claim_behind(tmp_path):
    """A worker SIGKILLed mid-job leaves its private input copy (``.input-*``, patient
    data) and its claim (``active``) in the job directory; the next attempt removes them
    (found by tests/system with a worker killed during a job)."""
    from magickbox.buckets import load_bucket_info
    from magickbox.jobfiles import JobDir
    from magickbox.runners import snapshot_input
    from magickbox.worker import run_attempt
    bucket = load_bucket_info(process_bucket(tmp_path / "buckets", "ProcOk",
                                             "echo '[{\"success\": \"success\"}]' > \"$2/proc.json\"\n"))
    source = tmp_path / "study"
    make_study(source / "series", 2)
    jobdir = JobDir(tmp_path / "jobs" / "1")
    jobdir.prepare({"job": 1}, source)
    dead = subprocess.Popen(["true"])
    dead.wait()
    dead_claim = jobdir.claim("dead-worker")          # the killed attempt: claimed, copied its input, died
    assert dead_claim is not None
    record = json.loads(jobdir.active.read_text())
    record["pid"] = dead.pid
    jobdir.active.write_text(json.dumps(record))
    leftover = snapshot_input(jobdir.input, jobdir.path)
    outcome = run_attempt(jobdir, bucket, "w", None)
    assert outcome is not None and outcome.status == "success"
    assert not leftover.exists()
    assert sorted(p.name for p in jobdir.path.iterdir() if p.name.startswith((".input-", "active"))) == []
