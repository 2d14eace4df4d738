"""The shipped ProcQA bucket end to end: synthetic phantom series in every layout sent with
dcmtk storescu to a running ``magickbox serve`` (process runner, embedded queue), the
committed jobs' measures.json checked against the analytic values, the figures and
report present, the measures delivered by the node to a real carbon-cache at the
acquisition time, and the fBIRN panels of the stability dashboard answered by
graphite-web.  Also the bucket's failure modes, run exactly as a job runs it."""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import REPO, wait_for_values
from dicom_helpers import MAGICKBOX, MagickboxProcess, make_study, storescu
from test_measure_stage import all_delivered, wait_detail
from test_qa_fbirn import DCIODVFY, GHOST_POINTS, RELATIVE

from magickbox.qa.phantom import LAYOUTS, PhantomSpec, generate, write_series

SPEC = PhantomSpec(slices=7, volumes=34, seed=21, coil="HEAD_32", start="2025-03-04T08:15:30")
FIGURES = ("roi_timecourse.png", "weisskoff.png", "sfnr.png", "report.png")




def output_of(node: MagickboxProcess, job: dict) -> Path:
    return node.data_dir / "jobs" / str(job["id"]) / "result" / "output"


def check_measures(doc: dict, truth: dict, where: str) -> None:
    values = {m["name"]: m["value"] for m in doc["measures"]}
    for key, tol in RELATIVE.items():
        assert values[key] == pytest.approx(truth[key], rel=tol), f"{where}: {key}"
    assert abs(values["ghost_pct"] - truth["ghost_pct"]) <= GHOST_POINTS, where
    for z in truth["phantom_slices"]:
        assert values[f"slice.{z + 1:02d}.sfnr"] == pytest.approx(truth["sfnr"], rel=0.02), where


def fbirn_panel_targets() -> list[str]:
    """The Graphite targets of the fBIRN panels of the stability overview dashboard."""
    dashboard = json.loads((REPO / "grafana-dashboards" / "phantom-stability-overview.json").read_text())
    targets = [t["target"] for p in dashboard["panels"] for t in p.get("targets", []) if ".fbirn." in t["target"]]
    assert len(targets) >= 8
    return targets


def test_procqa_bucket_end_to_end_every_layout(tmp_path, graphite):
    node = MagickboxProcess(tmp_path / "node", quiet_seconds=1.0, config={
        "graphite": {"address": graphite.line_address, "interval": 60},
        "measures": {"timezone": "Europe/Berlin", "interval": 0.2, "retry_interval": 0.5}})
    installed = subprocess.run([MAGICKBOX, "qa", "install", "--data-dir", str(node.data_dir)], capture_output=True,
                               text=True)
    assert installed.returncode == 0, installed.stderr
    info_path = node.data_dir / "buckets" / "procqa" / "info.json"
    info = json.loads(info_path.read_text())
    assert info["AETitle"] == "ProcQA" and info["run"]["runner"] == "process"
    info["qa"]["coil_aliases"] = {"HEAD_32": "32ch"}
    info_path.write_text(json.dumps(info))
    phantom = generate(SPEC)
    series_dirs = {}
    for layout in LAYOUTS:
        station = f"E2E {layout}"                      # one scanner per layout: distinct metric paths
        ph = dataclasses.replace(phantom, spec=dataclasses.replace(SPEC, station_name=station))
        series_dirs[layout] = write_series(ph, tmp_path / "series" / layout, layout)
    node.start()
    try:
        for layout, files in series_dirs.items():
            storescu(node.dicom_port, "ProcQA", files, calling="PHANTOMSCANNER")
        # one job per study; Siemens XA classic sends every volume as its own study
        expected_jobs = len(LAYOUTS) - 1 + SPEC.volumes
        jobs = node.wait_final(expected_jobs, timeout=600)
        failed = [(j["id"], j["message"]) for j in jobs if j["status"] != "success"]
        assert not failed, failed
        with_measures = [j for j in jobs if (output_of(node, j) / "measures.json").exists()]
        # the node itself delivers the measures (confirmed by carbon)
        records = {j["id"]: wait_detail(node, j["id"], all_delivered) for j in with_measures}
    finally:
        node.stop()
    assert len(jobs) == expected_jobs
    kept = [j for j in jobs if "volume kept" in j["message"]]
    assert len(with_measures) == len(LAYOUTS) and len(kept) == SPEC.volumes - 1
    assert not [d for j in jobs if j["id"] not in records for d in j["measures"]]
    when = int(datetime.datetime(2025, 3, 4, 7, 15, 30, tzinfo=datetime.timezone.utc).timestamp())
    seen_layouts = set()
    for job in with_measures:
        out = output_of(node, job)
        details = json.loads((out / "qa.json").read_text())
        doc = json.loads((out / "measures.json").read_text())
        scanner = details["scanner"]
        layout = scanner.removeprefix("e2e_").replace("_", "-")
        seen_layouts.add(layout)
        assert doc["prefix"] == f"hops.stability.{scanner}.32ch.fbirn" and doc["time"] == SPEC.start
        check_measures(doc, phantom.truth, layout)
        for name in FIGURES:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
        assert "fBIRN phantom stability report" in (out / "report.html").read_text()
        sc = pydicom.dcmread(out / "report_sc.dcm")
        assert sc.Modality == "OT" and sc.PatientID == "PHANTOM-QA" and sc.SamplesPerPixel == 3
        # into the phantom's study (XA classic: the study of the first volume)
        assert sc.StudyInstanceUID == pydicom.dcmread(series_dirs[layout][0]).StudyInstanceUID
        verify = subprocess.run([DCIODVFY, str(out / "report_sc.dcm")], capture_output=True, text=True)
        assert not [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]
        assert json.loads((out / "proc.json").read_text())[0]["success"] == "success"
        # the job record: every measure of measures.json, at the acquisition time (the
        # scanner's clock in Europe/Berlin), delivered under the bucket's prefix
        recorded = {m["path"]: m for m in records[job["id"]]["measures"]}
        assert set(recorded) == {f"{doc['prefix']}.{m['name']}" for m in doc["measures"]}
        assert {m["timestamp"] for m in recorded.values()} == {when}
        check = {p: recorded[p]["value"] for p in (f"{doc['prefix']}.{k}" for k in ("snr", "sfnr", "slice.04.sfnr"))}
        assert check == {f"{doc['prefix']}.{k}": next(m["value"] for m in doc["measures"] if m["name"] == k)
                         for k in ("snr", "sfnr", "slice.04.sfnr")}
        found = wait_for_values(graphite, check, when)
        assert found == check
        # the fBIRN panels of the stability dashboard show this scan (graphite-web)
        for target in fbirn_panel_targets():
            expanded = target.replace("$scanner", scanner).replace("$coil", "32ch").replace("$slice", "*")
            series = graphite.render_json(expanded, frm="20250301", until="20250310")
            values = [v for s in series for v, t in s["datapoints"] if v is not None]
            assert values, f"fBIRN panel target {expanded} has no data"
    assert seen_layouts == set(LAYOUTS)
    xa = next(j for j in with_measures if "xa_classic" in json.loads((output_of(node, j) / "qa.json").read_text())
              ["scanner"])
    assert any("assembled from 34 studies" in n for n in json.loads((output_of(node, xa) / "qa.json").read_text())
               ["notes"])
    assert not list((node.data_dir / "buckets" / "procqa" / "memory" / "pending").glob("*/v*"))


def run_bucket(input_dir: Path, output: Path, *extra: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "magickbox.qa.bucket", str(input_dir), str(output), *extra],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads((output / "proc.json").read_text())[0]


def test_bucket_failure_modes_are_clear(tmp_path):
    # not a phantom time series: one MR image
    make_study(tmp_path / "single", 1)
    code, proc = run_bucket(tmp_path / "single", tmp_path / "out1")
    assert code == 0 and proc["success"] == "failed" and "single volume" in proc["message"]
    # nothing with pixel data
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    code, proc = run_bucket(tmp_path / "junk", tmp_path / "out2")
    assert proc["success"] == "failed" and "no images with pixel data" in proc["message"] and "a.txt" in proc["message"]
    # a configuration error names the key, exit code 2
    bad = tmp_path / "info.json"
    bad.write_text(json.dumps({"qa": {"roi_size": 1}}))
    code, proc = run_bucket(tmp_path / "single", tmp_path / "out3", "--config", str(bad))
    assert code == 2 and proc["success"] == "failed" and "qa.roi_size: expected an integer 3-255" in proc["message"]
    # too few volumes for the analysis
    spec = PhantomSpec(slices=5, volumes=8, roi_size=5, exact=False)
    write_series(generate(spec), tmp_path / "short", "mosaic")
    code, proc = run_bucket(tmp_path / "short", tmp_path / "out4")
    assert proc["success"] == "failed" and "8 volumes: at least 10 are needed" in proc["message"]


def test_xa_classic_volumes_are_assembled_in_memory(tmp_path):
    """Each volume arrives as its own job; without NumberOfTemporalPositions the site sets
    qa.series_volumes.  Volumes arriving twice count once."""
    volumes = 16
    spec = PhantomSpec(slices=5, volumes=volumes, roi_size=5, seed=9, dummy_volumes=2)
    files = write_series(generate(spec), tmp_path / "xa", "xa-classic")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.NumberOfTemporalPositions
        ds.save_as(f)
    by_volume: dict[str, list[Path]] = {}
    for f in files:
        by_volume.setdefault(f.name.split("_")[1], []).append(f)
    memory = tmp_path / "memory"
    config = tmp_path / "info.json"
    job_input = tmp_path / "job0"
    job_input.mkdir()
    for f in by_volume["0001"]:
        (job_input / f.name).write_bytes(f.read_bytes())
    code, proc = run_bucket(job_input, tmp_path / "out0", str(memory))
    assert proc["success"] == "failed" and "qa.series_volumes" in proc["message"]
    config.write_text(json.dumps({"qa": {"series_volumes": volumes, "roi_size": 5}}))
    results = []
    for i, (volume, vfiles) in enumerate(sorted(by_volume.items())):
        for attempt in (0, 1) if volume == "0003" else (0,):          # volume 3 is sent twice
            job = tmp_path / f"job{i}_{attempt}"
            job.mkdir()
            for f in vfiles:
                (job / f.name).write_bytes(f.read_bytes())
            code, proc = run_bucket(job, tmp_path / f"out{i}_{attempt}", str(memory), "--config", str(config))
            assert code == 0 and proc["success"] == "success", proc
            results.append((tmp_path / f"out{i}_{attempt}", proc["message"]))
    assert [("kept: " in m) for _, m in results] == [True] * volumes + [False]
    assert f"3 of {volumes}" in results[2][1] and f"3 of {volumes}" in results[3][1]    # the repeat counted once
    final = json.loads((results[-1][0] / "measures.json").read_text())
    assert {m["name"] for m in final["measures"]} >= {"snr", "sfnr", "rdc"}
    assert not list((memory / "pending").glob("*/v*"))


def test_work_sh_finds_a_python_with_hops_or_says_why(tmp_path):
    """The shipped work.sh as the process runner starts it: HOPS_PYTHON, python.path,
    the python beside magickbox on PATH; none of them -> a failed proc.json that says so."""
    from magickbox.qa.cli import BUCKET_DIR
    bucket = tmp_path / "procqa"
    shutil.copytree(BUCKET_DIR, bucket)
    (tmp_path / "in").mkdir()
    venv_bin = str(Path(sys.executable).parent)

    def start(name: str, env: dict) -> dict:
        out = tmp_path / name
        out.mkdir()
        subprocess.run([str(bucket / "work.sh"), str(tmp_path / "in"), str(out), str(tmp_path / "mem")], cwd=bucket,
                       env=env, capture_output=True, text=True, timeout=120)
        return json.loads((out / "proc.json").read_text())[0]

    plain = {"PATH": "/usr/bin:/bin"}
    assert "no images with pixel data" in start("env", dict(plain, HOPS_PYTHON=sys.executable))["message"]
    assert "no images with pixel data" in start("beside", {"PATH": f"{venv_bin}:/usr/bin:/bin"})["message"]
    (bucket / "python.path").write_text(sys.executable + "\n")
    assert "no images with pixel data" in start("recorded", plain)["message"]
    (bucket / "python.path").unlink()
    missing = start("missing", plain)
    assert missing["success"] == "failed" and "no Python with HOPS" in missing["message"]


def test_cli_phantom_then_analyse(tmp_path):
    """What a site does to check its set-up: generate, analyse, compare with the truth."""
    made = subprocess.run([MAGICKBOX, "qa", "phantom", str(tmp_path / "series"), "--layout", "xa-enhanced",
                           "--volumes", "34", "--slices", "5", "--ghost", "4", "--station-name", "Bay 3",
                           "--truth", str(tmp_path / "truth.json")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "wrote 34 file(s) (xa-enhanced)" in made.stdout and "SNR 397" in made.stdout
    ran = subprocess.run([MAGICKBOX, "qa", "analyse", str(tmp_path / "series"), str(tmp_path / "result")],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout[-2000:]
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["spec"]["ghost"] == 4 and truth["layout"] == "xa-enhanced"
    doc = json.loads((tmp_path / "result" / "measures.json").read_text())
    assert doc["prefix"] == "hops.stability.bay_3.head_32.fbirn"
    values = {m["name"]: m["value"] for m in doc["measures"]}
    for key in ("snr", "sfnr", "fluctuation_pct", "drift_pct", "rdc"):
        assert values[key] == pytest.approx(truth["truth"][key], rel=0.02), key
    bad = subprocess.run([MAGICKBOX, "qa", "phantom", str(tmp_path / "x"), "--volumes", "5"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "volumes: too few" in bad.stderr
