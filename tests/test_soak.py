"""Fault-injection soak: the node is SIGKILLed again and again while a scanner sends.

Bounded in CI (2 rounds); ``HOPS_LONG=1`` runs 20 rounds with bigger studies:
    HOPS_LONG=1 deploy/local/test.sh tests/test_soak.py
"""
from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pydicom
from dicom_helpers import MagickboxProcess, acknowledged_files, dataset_bytes, make_study, write_bucket

LONG = os.environ.get("HOPS_LONG") == "1"
ROUNDS = 20 if LONG else 2
IMAGES = 200 if LONG else 60


def test_repeated_sigkill_while_receiving_loses_nothing(tmp_path):
    rng = random.Random(11)
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA", run={"runner": "process"})
    (data / "buckets" / "procqa" / "work.sh").write_text(
        "#!/bin/sh\necho '[{\"success\": \"success\"}]' > \"$2/proc.json\"\n")
    (data / "buckets" / "procqa" / "work.sh").chmod(0o755)
    node = MagickboxProcess(data, quiet_seconds=1)
    all_acked: list[Path] = []
    studies = set()
    try:
        for r in range(ROUNDS):
            node.start()
            files = make_study(tmp_path / f"s{r}", IMAGES)
            studies.add(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            sender = subprocess.Popen(["storescu", "-v", "-aet", "SCANNER", "-aec", "ProcQA", "127.0.0.1",
                                       str(node.dicom_port), *map(str, files)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=dict(os.environ, TCP_NODELAY="1"))
            time.sleep(rng.uniform(0.05, 0.6))
            node.kill()
            out, _ = sender.communicate(timeout=120)
            all_acked += acknowledged_files(out)
        node.start()
        jobs = node.wait_jobs(len([s for s in studies if (data / "archive" / s).exists()]), timeout=120)
    finally:
        node.stop()
    archived = {p.name: p for p in node.archived()}
    for src in all_acked:
        sop = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
        assert f"{sop}.dcm" in archived, f"acknowledged {src} lost"
        assert dataset_bytes(archived[f"{sop}.dcm"]) == dataset_bytes(src)
    for path in archived.values():
        pydicom.dcmread(path)                     # complete, readable files only
    assert not list((data / "tmp").glob("*.part"))
    assert {j["study_uid"] for j in jobs} == {s for s in studies if (data / "archive" / s).exists()}
