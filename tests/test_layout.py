"""Every path setting in a non-default place: a study goes from dcmtk storescu through a
bucket to a committed job, with the embedded queue and with gearmand plus a separate
``magickbox worker``; every command finds the node's data through ``--config``."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study, storescu, write_bucket

from magickbox.layout import DataLayout

CLASSIFY = [{"type": "phantom", "id": "PHANTOM", "rules": [{"tag": ["0x08", "0x60"], "value": "^MR$"}]}]


def elsewhere(tmp_path: Path) -> tuple[dict, Path, Path]:
    """A config whose buckets and classification rules live outside the data directory."""
    data, buckets, rules = tmp_path / "data", tmp_path / "site" / "buckets", tmp_path / "site" / "rules.json"
    bucket = write_bucket(buckets, "ProcCopy", run={"runner": "process"})
    (bucket / "work.sh").write_text('#!/bin/sh\nls -R "$1" > "$2/listing.txt"\n'
                                    'echo \'[{"success": "success", "message": "copied"}]\' > "$2/proc.json"\n')
    (bucket / "work.sh").chmod(0o755)
    rules.write_text(json.dumps(CLASSIFY))
    return {"data_dir": str(data), "buckets_dir": str(buckets), "classify_rules": str(rules)}, data, buckets


def magickbox(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAGICKBOX, *args], capture_output=True, text=True, timeout=120)


def check_commands(config_file: Path, data: Path, job: dict) -> None:
    out = magickbox("jobs", "--config", str(config_file))
    assert out.returncode == 0 and f"{job['id']:>6} success" in out.stdout, out.stdout + out.stderr
    out = magickbox("buckets", "list", "--config", str(config_file))
    assert "ProcCopy" in out.stdout, out.stdout + out.stderr
    out = magickbox("backfill", "ProcCopy", "--config", str(config_file), "--dry-run", "--force", "--no-progress")
    assert out.returncode == 0 and "would queue" in out.stdout, out.stdout + out.stderr
    out = magickbox("route", "test", str(job["id"]), "--config", str(config_file))
    assert out.returncode == 0 and "ProcCopy" in out.stdout, out.stdout + out.stderr
    assert not (data / "buckets").exists() and not (data / "classifyRules.json").exists()


@pytest.mark.parametrize("queue", ["embedded", "gearmand"])
def test_every_path_setting_elsewhere(tmp_path, queue, request):
    config, data, buckets = elsewhere(tmp_path)
    worker = None
    if queue == "gearmand":
        gearmand = request.getfixturevalue("gearmand")
        config["gearman"] = {"servers": [gearmand.address]}
        config["worker"] = {"enabled": False}
    node = MagickboxProcess(data, quiet_seconds=0.5, config=config).start()
    config_file = data.parent / f"{data.name}.toml"
    try:
        if queue == "gearmand":     # a separate worker that knows the node only by its config file
            worker = subprocess.Popen([MAGICKBOX, "worker", "--config", str(config_file), "--gearman",
                                       config["gearman"]["servers"][0]], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
        storescu(node.dicom_port, "ProcCopy", make_study(tmp_path / "study", 3))
        job = node.wait_final(1, timeout=90)[0]
    finally:
        node.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(20)
    assert job["status"] == "success", job
    assert job["series_types"] == ["phantom"], job          # the classification rules elsewhere were used
    layout = DataLayout.of(data, buckets, config["classify_rules"])
    listing = (layout.job_dir(job["id"]) / "result" / "output" / "listing.txt").read_text()
    assert listing.count(".dcm") == 3
    assert len(list(layout.archive.rglob("*.dcm"))) == 3
    check_commands(config_file, data, job)
