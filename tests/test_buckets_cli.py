"""``magickbox buckets``: scaffold, local test run, install from a directory or an image,
enable/disable seen by a running node, remove."""
from __future__ import annotations

import json
import shutil
import subprocess

from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study, storescu


def mb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([MAGICKBOX, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def test_create_run_list_enable_remove(tmp_path):
    data = tmp_path / "node"
    out = mb("buckets", "create", "qa-count", "--data-dir", str(data)).stdout
    assert "created bucket" in out
    bucket = data / "buckets" / "qa-count"
    info = json.loads((bucket / "info.json").read_text())
    assert {"name", "description", "version", "AETitle", "license", "enabled"} <= set(info)
    assert info["AETitle"] == "Procqacount" and info["run"]["runner"] == "process"
    for name in ("work.sh", "Dockerfile", "measures.json"):
        assert (bucket / name).exists()
    make_study(tmp_path / "in", 3)
    run = mb("buckets", "run", "qa-count", str(tmp_path / "in"), str(tmp_path / "out"), "--data-dir", str(data))
    assert run.stdout.startswith("success: counted the input files")
    assert (tmp_path / "out" / "file_count.txt").read_text().strip() == "3"
    assert json.loads((tmp_path / "out" / "measures.json").read_text()) == {
        "version": 1, "measures": [{"name": "file_count", "value": 3}]}
    from magickbox.results.measures import parse_measures
    assert parse_measures((bucket / "measures.json").read_text(), None).measures[1].unit == "ml"
    assert (bucket / "memory" / "runs").read_text().strip() == "1"
    (bucket / "work.sh").write_text("#!/bin/sh\nexit 4\n")
    failed = mb("buckets", "run", "qa-count", str(tmp_path / "in"), str(tmp_path / "out2"), "--data-dir", str(data),
                check=False)
    assert failed.returncode == 1 and failed.stdout.startswith("failed: exit code 4")
    assert "Procqacount" in mb("buckets", "list", "--data-dir", str(data)).stdout
    mb("buckets", "disable", "qa-count", "--data-dir", str(data))
    assert json.loads((bucket / "info.json").read_text())["enabled"] == 0
    assert "disabled" in mb("buckets", "list", "--data-dir", str(data)).stdout
    mb("buckets", "enable", "Procqacount", "--data-dir", str(data))
    assert json.loads((bucket / "info.json").read_text())["enabled"] == 1
    removed = mb("buckets", "remove", "qa-count", "--data-dir", str(data)).stdout
    assert not bucket.exists() and ".removed" in removed
    bad = mb("buckets", "create", "Bad Name", "--data-dir", str(data), check=False)
    assert bad.returncode == 2 and "lower-case" in bad.stderr


def test_enable_disable_reaches_a_running_node(tmp_path):
    data = tmp_path / "node"
    mb("buckets", "create", "live", "--data-dir", str(data), "--ae-title", "ProcLive")
    node = MagickboxProcess(data, quiet_seconds=0.5).start()
    try:
        ok = subprocess.run(["echoscu", "-aet", "S", "-aec", "ProcLive", "127.0.0.1", str(node.dicom_port)],
                            capture_output=True)
        assert ok.returncode == 0
        mb("buckets", "disable", "live", "--data-dir", str(data))
        import time
        time.sleep(1.5)
        rejected = subprocess.run(["echoscu", "-aet", "S", "-aec", "ProcLive", "127.0.0.1", str(node.dicom_port)],
                                  capture_output=True, text=True)
        assert rejected.returncode != 0 and "Called AE Title Not Recognized" in rejected.stderr
        mb("buckets", "enable", "live", "--data-dir", str(data))
        time.sleep(1.5)
        storescu(node.dicom_port, "ProcLive", make_study(tmp_path / "s", 2))
        node.wait_jobs(1)
    finally:
        node.stop()


def test_install_from_directory_and_from_image(tmp_path, podman):
    src = tmp_path / "src" / "mybucket"
    mb("buckets", "create", "mybucket", "--buckets-dir", str(tmp_path / "src"))
    data = tmp_path / "node"
    mb("buckets", "install", str(src), "--data-dir", str(data))
    assert (data / "buckets" / "mybucket" / "info.json").exists()
    again = mb("buckets", "install", str(src), "--data-dir", str(data), check=False)
    assert again.returncode == 2 and "is installed" in again.stderr
    # an image carrying /root/storage/info.json, the MagickBox way
    rootfs = tmp_path / "imgroot"
    (rootfs / "root" / "storage").mkdir(parents=True)
    (rootfs / "root" / "storage" / "info.json").write_text(json.dumps({
        "name": "fromimage", "description": "d", "version": "2.0", "AETitle": "ProcImg", "license": "MIT",
        "enabled": 1, "run": {"command": ["/bin/sh", "-c", "echo hi"]}}))
    (rootfs / "bin").mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "true").symlink_to("busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    tar = tmp_path / "img.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    assert podman.podman("import", "--change", "ENV PATH=/bin", str(tar), "localhost/fromimage:2.0").returncode == 0
    out = mb("buckets", "install", "localhost/fromimage:2.0", "--data-dir", str(data), "--engine", podman.url).stdout
    assert "installed bucket ProcImg" in out
    info = json.loads((data / "buckets" / "fromimage" / "info.json").read_text())
    assert info["run"]["image"] == "localhost/fromimage:2.0" and info["run"]["runner"] == "container"
