"""``mb`` against two real ``magickbox serve`` nodes: machines, sender, buckets, push to
the less-loaded node that has the bucket, list / log / pull / pull-input / remove
across both, JSON output, the config file's mode."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study
from test_jobs import process_bucket

MB = str(Path(MAGICKBOX).with_name("mb"))
# each job waits until the test drops a "release" file into the bucket's memory dir
GATED = """echo "job on $(hostname) for $(basename "$(dirname "$1")")"
while [ ! -e "$3/release" ]; do sleep 0.1; done
find "$1" -name '*.dcm' | wc -l > "$2/result.txt"
echo '[{"success": "success", "message": "done"}]' > "$2/proc.json"
"""


def mb(env: dict, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([MB, *args], capture_output=True, text=True, input=stdin, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"mb {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def out(env: dict, *args: str, **kw) -> object:
    return json.loads(mb(env, *args, **kw).stdout)


@pytest.fixture
def nodes(tmp_path):
    made = {}
    for name in ("A", "B"):
        data = tmp_path / f"node{name}"
        process_bucket(data / "buckets", "ProcX", GATED)
        if name == "A":
            process_bucket(data / "buckets", "ProcOnlyA", GATED)
        made[name] = MagickboxProcess(data, quiet_seconds=0.5).start()
    yield made
    for node in made.values():
        node.stop()


def release(node: MagickboxProcess) -> None:
    for bucket in (node.data_dir / "buckets").iterdir():
        (bucket / "memory").mkdir(exist_ok=True)
        (bucket / "memory" / "release").touch()


def wait_load(env: dict, machine: str, bucket: str, queued: int, running: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = next(b for b in out(env, "-m", machine, "buckets", f"^{bucket}$") if b["AETitle"] == bucket)
        if (row["queued"], row["running"]) == (queued, running):
            return
        time.sleep(0.2)
    raise AssertionError(f"{machine} {bucket}: {row}")


def wait_all_final(env: dict, count: int) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = out(env, "list")
        if len(jobs) == count and all(j["status"] == "success" for j in jobs):
            return jobs
        time.sleep(0.3)
    raise AssertionError(jobs)


def test_mb_across_two_nodes(nodes, tmp_path):
    env = dict(os.environ, MB_CONFIG_DIR=str(tmp_path / "mbconfig"))
    a, b = nodes["A"], nodes["B"]
    for name, node in (("A", a), ("B", b)):
        assert out(env, "machines", "add", node.url, "--name", name, "--token-stdin",
                   stdin=node.token + "\n") == {"added": name, "url": node.url}
    config = tmp_path / "mbconfig" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert a.token in config.read_text()
    listed = mb(env, "machines", "list", "--check").stdout
    assert a.token not in listed and b.token not in listed
    assert [(m["name"], m["reachable"]) for m in json.loads(listed)] == [("A", True), ("B", True)]
    bad = mb(env, "machines", "add", a.url, "--name", "C", "--token-stdin", stdin="mbx_wrong\n", check=False)
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr
    assert out(env, "sender", "alice:p1") == {"sender": "alice:p1"}

    buckets = out(env, "buckets")
    assert sorted((x["machine"], x["AETitle"]) for x in buckets) == [("A", "ProcOnlyA"), ("A", "ProcX"),
                                                                     ("B", "ProcX")]
    assert [x["machine"] for x in out(env, "buckets", "onlya")] == ["A"]

    studies = [tmp_path / f"study{i}" for i in range(5)]
    for i, study in enumerate(studies):
        make_study(study, 2 + i)
    # load node A: one ProcX job running, one queued
    first = out(env, "-m", "A", "push", "ProcX", str(studies[0]))
    assert first["machine"] == "A" and isinstance(first["job"], int)
    out(env, "-m", "A", "push", "ProcX", str(studies[1]), "--sender", "bob:p2")
    wait_load(env, "A", "ProcX", 1, 1)
    # the next ProcX push goes to B, the less-loaded node with that bucket ...
    to_b = mb(env, "push", "ProcX", str(studies[2]), "--sender", "bob:p2")
    assert json.loads(to_b.stdout)["machine"] == "B" and "sending to B" in to_b.stderr
    wait_load(env, "B", "ProcX", 0, 1)
    # ... and with B busy too, to the node with fewer jobs of that bucket again: B (1) < A (2)
    assert out(env, "push", "ProcX", str(studies[3]))["machine"] == "B"
    # a bucket only A has goes to A, however loaded
    only_a = out(env, "push", "ProcOnlyA", str(studies[4]))
    assert only_a["machine"] == "A" and only_a["instances"] == 6
    missing = mb(env, "push", "ProcNowhere", str(studies[0]), check=False)
    assert missing.returncode == 2 and "no active machine has an enabled bucket 'ProcNowhere'" in missing.stderr

    release(a)
    release(b)
    jobs = wait_all_final(env, 5)
    assert sorted((j["machine"], j["bucket_ae"], j["calling_ae"]) for j in jobs) == [
        ("A", "ProcOnlyA", "alice:p1"), ("A", "ProcX", "alice:p1"), ("A", "ProcX", "bob:p2"),
        ("B", "ProcX", "alice:p1"), ("B", "ProcX", "bob:p2")]
    assert all("study_uid" not in j for j in jobs)
    bobs = out(env, "list", "bob")
    assert sorted(j["machine"] for j in bobs) == ["A", "B"]
    assert out(env, "list", "--bucket", "ProcOnlyA") == [j for j in jobs if j["bucket_ae"] == "ProcOnlyA"]

    logs = out(env, "log", "alice")
    assert len(logs) == 3 and all(j["log"].startswith("job on ") for j in logs)

    pulled = out(env, "pull", "alice", "--dir", str(tmp_path / "out"))
    assert sorted((p["machine"], p["status"]) for p in pulled) == [("A", "success"), ("A", "success"),
                                                                    ("B", "success")]
    for p in pulled:
        with zipfile.ZipFile(p["file"]) as zf:
            assert zf.testzip() is None
            result = [n for n in zf.namelist() if n.endswith("output/result.txt")]
            assert len(result) == 1 and int(zf.read(result[0])) in (2, 5, 6)
        assert Path(p["file"]).name == f"{p['machine']}-job{p['id']}-output.zip"
    inputs = out(env, "pull-input", "bob", "--dir", str(tmp_path / "in"))
    counts = []
    for p in inputs:
        with zipfile.ZipFile(p["file"]) as zf:
            counts.append(len([n for n in zf.namelist() if n.endswith(".dcm")]))
    assert sorted(counts) == [3, 4]

    # remove asks first; "n" removes nothing
    asked = mb(env, "remove", "bob", stdin="n\n")
    assert "Remove these 2 job(s) on A, B?" in asked.stderr and json.loads(asked.stdout) == []
    assert len(out(env, "list", "bob")) == 2
    removed = out(env, "remove", "bob", "--yes")
    assert sorted(r["machine"] for r in removed) == ["A", "B"]
    assert out(env, "list", "bob") == [] and len(out(env, "list")) == 3
    for job in bobs:
        node = a if job["machine"] == "A" else b
        assert not (node.data_dir / "jobs" / str(job["id"])).exists()

    # a machine that does not answer: the others are still listed, the exit code says so
    b.stop()
    partial = mb(env, "list", check=False)
    assert partial.returncode == 1 and "B (" in partial.stderr and "cannot connect" in partial.stderr
    assert {j["machine"] for j in json.loads(partial.stdout)} == {"A"}
    out(env, "machines", "deactivate", "B")
    assert mb(env, "list").returncode == 0
    out(env, "machines", "rm", "B")
    assert [m["name"] for m in out(env, "machines", "list")] == ["A"]


def test_mb_progress_bars_and_usage_errors(nodes, tmp_path):
    env = dict(os.environ, MB_CONFIG_DIR=str(tmp_path / "mbconfig"), MB_PROGRESS="1")
    node = nodes["A"]
    assert mb(env, "list", check=False).returncode == 2                  # no machines yet: says how
    out(env, "machines", "add", node.url, "--token", node.token)
    make_study(tmp_path / "s", 3)
    release(node)
    pushed = mb(env, "push", "ProcX", str(tmp_path / "s"))
    assert "zip s:" in pushed.stderr and "push testnode:" in pushed.stderr   # tqdm bars on stderr
    job = json.loads(pushed.stdout)["job"]
    deadline = time.monotonic() + 30
    while out(env, "list", f"^#{job} ")[0]["status"] != "success":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pulled = mb(env, "pull", f"^#{job} ", "--dir", str(tmp_path / "o"))
    assert f"testnode-job{job}-output.zip:" in pulled.stderr and "B/s" in pulled.stderr
    bad = mb(env, "list", "(unclosed", check=False)
    assert bad.returncode == 1 and "not a valid regular expression" in bad.stderr
    assert mb(env, "push", "ProcX", str(tmp_path / "nothing-here"), check=False).returncode == 2


def test_mb_imports_nothing_of_the_node():
    import sys
    probe = ("import sys, magickbox.client.cli; "
             "print(sorted(m for m in sys.modules if m.startswith(('magickbox', 'stability_collector', 'fastapi', "
             "'uvicorn', 'pydicom', 'pynetdicom'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded.replace("'", '"')) == ["magickbox", "magickbox.client", "magickbox.client.cli",
                                                    "magickbox.client.config", "magickbox.client.remote"]
