"""The whole pipeline on loopback for fault injection (tests/system/test_faults.py).

Real components, each a process stopped and SIGKILLed by PID: gearmand (sqlite queue), a
``magickbox serve`` node using it (no embedded worker), a separate ``magickbox worker``,
carbon-cache, ``hops-stability watch`` feeding it, and a dcmtk ``storescp`` as the
routing destination.  :class:`PipelineSystem` sends work, kills and
restarts components, waits for quiescence and lists invariant violations.

Results:
* routing: ``<data>/routing.json`` (MagickBox format) sends the bucket's OUTPUT to the
  storescp peer; the job detail (``GET /api/jobs/{id}``) ``routing`` must say so
  (:func:`magickbox.demo.routing_delivered`);
* measures: the bucket writes ``measures.json`` (schema in magickbox/results/measures.py)
  without a prefix, so the node sends ``hops.measures.<bucket>.<StationName>.<name>``;
  each study has its own StationName; the job detail's ``measures`` must say delivered.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from conftest import Gearmand
from dicom_helpers import MAGICKBOX, MagickboxProcess, StorescpPeer, acknowledged_files, make_study, stop_process

from magickbox.demo import measures_delivered, routing_delivered
from magickbox.layout import DataLayout
from magickbox.model import FINAL_STATUSES
from stability_collector.localgraphite import LocalGraphite, whisper_value_at
from stability_collector.metrics import MetricLayout, report_metrics
from stability_collector.report import read_report

BUCKET_AE = "ProcSys"
SCANNER = "sysscan"
HOPS_STABILITY = shutil.which("hops-stability", path=os.path.dirname(sys.executable)) or "hops-stability"
TEMPLATE_REPORT = sorted((Path(__file__).resolve().parents[2] / "sample_statfiles" / "prisma1").glob("Stability_*"))[0]
COMPONENTS = ("node", "worker", "gearmand", "carbon")

BUCKET_SCRIPT = r'''
import json, os, random, shutil, sys, time
from pathlib import Path
import pydicom
inp, out = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(inp.rglob("*.dcm"))
time.sleep(random.uniform(0.2, 1.5))          # long enough for a kill to land inside a job
ds = pydicom.dcmread(files[0], stop_before_pixels=True)
shutil.copyfile(files[0], out / "result.dcm")  # a DICOM output for routing
when = f"{ds.AcquisitionDate[:4]}-{ds.AcquisitionDate[4:6]}-{ds.AcquisitionDate[6:8]}T{ds.AcquisitionTime[:2]}:{ds.AcquisitionTime[2:4]}:00+00:00"
(out / "measures.json").write_text(json.dumps({"version": 1, "time": when,
                                               "measures": [{"name": "instances", "value": len(files)}]}))
(out / "proc.json").write_text(json.dumps([{"success": "success", "message": f"{len(files)} instances"}]))
'''


@dataclass
class SentStudy:
    uid: str
    station: str
    files: dict[Path, str]                      # file -> SOP Instance UID
    acquired: int                               # epoch of AcquisitionDate/Time (UTC)
    sender: subprocess.Popen | None = None
    acked: set[str] = field(default_factory=set)


@dataclass
class DroppedReport:
    name: str
    source: Path


class PipelineSystem:
    def __init__(self, base: Path, rng: random.Random):
        self.base, self.rng = base, rng
        self.gearmand = Gearmand(base / "gearmand")
        self.graphite = LocalGraphite(base / "graphite")
        self.data = base / "node"
        self.layout = DataLayout.of(self.data)
        self.reports_dir = base / "scanner" / SCANNER
        self.peer = StorescpPeer(base / "pacs", ae_title="PACS")
        self.node: MagickboxProcess | None = None
        self.worker: subprocess.Popen | None = None
        self.watch: subprocess.Popen | None = None
        self.studies: list[SentStudy] = []
        self.reports: list[DroppedReport] = []
        self.kills: list[str] = []
        self.study_counter = 0
        self.report_counter = 0
        self.checked_reports = 0
        self.read_checked: set[str] = set()        # archived instances already read back completely

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.gearmand.start()
        self.graphite.start()
        self.peer.start()
        buckets = self.layout.buckets / "procsys"
        buckets.mkdir(parents=True, exist_ok=True)
        (buckets / "info.json").write_text(json.dumps({
            "name": "ProcSys", "description": "system test bucket", "version": "1.0", "AETitle": BUCKET_AE,
            "license": "MIT", "enabled": 1, "run": {"runner": "process", "timeout": 120, "retries": 5}}))
        (buckets / "bucket.py").write_text(BUCKET_SCRIPT)
        (buckets / "work.sh").write_text(f"#!/bin/sh\nexec {sys.executable} \"$(dirname \"$0\")/bucket.py\" \"$@\"\n")
        (buckets / "work.sh").chmod(0o755)
        self.layout.routing_rules.parent.mkdir(parents=True, exist_ok=True)
        self.layout.routing_rules.write_text(json.dumps({"routing": [{
            "name": "system test outputs to the PACS", "AETitleIn": BUCKET_AE, "RouteDirectory": "OUTPUT",
            "send": [{"success": {"IP": "127.0.0.1", "PORT": str(self.peer.port), "AETitleSender": "NODE",
                                  "AETitleTo": "PACS", "retry": {"count": 100, "backoff": 1}}}]}]}))
        self.node = MagickboxProcess(self.data, quiet_seconds=1, extra_args=["--no-worker"], config={
            "gearman": {"servers": [self.gearmand.address], "resubmit_after": 3},
            "graphite": {"address": self.graphite.line_address, "interval": 2},
            # carbon runs on this host: a measure counts as delivered once read back from
            # whisper (a carbon killed after confirming would otherwise lose it)
            "measures": {"verify_whisper_dir": str(self.graphite.whisper_dir), "retry_interval": 1}})
        self.node.start()
        self.start_worker()
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        self.start_watch()

    def start_worker(self) -> None:
        log = open(self.base / "worker.log", "ab")
        self.worker = subprocess.Popen([MAGICKBOX, "worker", "--gearman", self.gearmand.address, "--data-dir",
                                        str(self.data), "--worker-id", "sysworker"], stdout=log,
                                       stderr=subprocess.STDOUT)
        log.close()

    def start_watch(self) -> None:
        log = open(self.base / "watch.log", "ab")
        self.watch = subprocess.Popen([HOPS_STABILITY, "watch", f"{SCANNER}={self.reports_dir}", "--graphite",
                                       self.graphite.line_address, "--timezone", "UTC", "--poll-interval", "2",
                                       "--settle-seconds", "5", "--timeout", "5",
                                       "--verify-whisper", str(self.graphite.whisper_dir)], stdout=log,
                                      stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> None:
        for study in self.studies:
            if study.sender is not None and study.sender.poll() is None:
                study.sender.kill()
                study.sender.wait()
        stop_process(self.watch)
        stop_process(self.worker)
        if self.node is not None:
            self.node.stop()
        self.peer.stop()
        self.gearmand.stop()
        self.graphite.stop()

    # -- faults ----------------------------------------------------------------------------
    def kill(self, component: str) -> None:
        """SIGKILL one component (and wait for it to be gone)."""
        self.kills.append(component)
        if component == "node":
            assert self.node is not None
            self.node.kill()
        elif component == "worker":
            assert self.worker is not None
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait(10)
        elif component == "gearmand":
            self.gearmand.kill()
        elif component == "carbon":
            carbon = self.graphite.carbon
            assert carbon is not None
            carbon.send_signal(signal.SIGKILL)
            carbon.wait(10)
            self.graphite.carbon = None
            (self.graphite.storage / "carbon-cache.pid").unlink(missing_ok=True)
        else:
            raise ValueError(component)

    def restart(self, component: str) -> None:
        if component == "node":
            assert self.node is not None
            self.node.start()
        elif component == "worker":
            self.start_worker()
        elif component == "gearmand":
            self.gearmand.start()
        elif component == "carbon":
            self.graphite.start_carbon()

    # -- work ------------------------------------------------------------------------------
    def new_study(self, images: int) -> SentStudy:
        self.study_counter += 1
        n = self.study_counter
        acquired = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=n)
        station = f"systest{n:04d}"
        files = make_study(self.base / "studies" / f"s{n:04d}", images, StationName=station,
                           AcquisitionDate=acquired.strftime("%Y%m%d"), AcquisitionTime=acquired.strftime("%H%M%S"))
        uids = {f: str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        study = SentStudy(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), station, uids,
                          int(acquired.timestamp()))
        self.studies.append(study)
        return study

    def send(self, study: SentStudy) -> None:
        assert self.node is not None
        study.sender = subprocess.Popen(
            ["storescu", "-v", "-aet", "SCANNER", "-aec", BUCKET_AE, "127.0.0.1", str(self.node.dicom_port),
             *map(str, study.files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, TCP_NODELAY="1"))

    def collect_sends(self) -> None:
        for study in self.studies:
            if study.sender is not None:
                out, _ = study.sender.communicate(timeout=120)
                study.acked |= {study.files[Path(p)] for p in acknowledged_files(out)}
                study.sender = None

    def drop_report(self) -> DroppedReport:
        """A Stability report copied in as a scanner does (written elsewhere, renamed in)."""
        self.report_counter += 1
        when = dt.datetime(2023, 1, 1) + dt.timedelta(hours=self.report_counter)
        name = when.strftime("Stability_%Y%m%dT%H%M%S.txt")
        staging = self.base / "staging"
        staging.mkdir(exist_ok=True)
        shutil.copyfile(TEMPLATE_REPORT, staging / name)
        os.replace(staging / name, self.reports_dir / name)
        report = DroppedReport(name, TEMPLATE_REPORT)
        self.reports.append(report)
        return report

    # -- quiescence ------------------------------------------------------------------------
    def archived(self) -> dict[str, list[Path]]:
        """SOP Instance UID -> archived paths (outside .superseded)."""
        found: dict[str, list[Path]] = {}
        for path in self.layout.archive.rglob("*.dcm"):
            if ".superseded" not in path.parts:
                found.setdefault(path.stem, []).append(path)
        return found

    def archived_studies(self) -> set[str]:
        return {p.name for p in self.layout.archive.iterdir() if p.is_dir() and any(p.rglob("*.dcm"))} \
            if self.layout.archive.is_dir() else set()

    def jobs(self) -> list[dict]:
        assert self.node is not None
        return self.node.jobs()

    def wait_quiescent(self, timeout: float) -> list[dict]:
        """Until every report is archived, every archived study has a job and every job
        is final, routed and its measures delivered; returns the job details.
        AssertionError naming what did not settle."""
        deadline = time.monotonic() + timeout
        why = ""
        while time.monotonic() < deadline:
            for name, proc in (("worker", self.worker), ("watch", self.watch), ("node", self.node and self.node.proc)):
                if proc is None or proc.poll() is not None:
                    raise AssertionError(f"{name} is not running (exit {proc and proc.returncode})")
            if self.graphite.carbon is None or self.graphite.carbon.poll() is not None:
                raise AssertionError("carbon-cache is not running")
            pending = sorted(p.name for p in self.reports_dir.glob("Stability_*"))
            try:
                jobs = self.jobs()
            except OSError as exc:
                why = f"node API: {exc}"
                time.sleep(0.5)
                continue
            studies = self.archived_studies()
            with_job = {j.get("study_uid") for j in jobs}
            not_final = [(j["id"], j["status"]) for j in jobs if j["status"] not in FINAL_STATUSES]
            why = ""
            if pending:
                why = f"{len(pending)} report(s) not archived yet: {pending[:3]}"
            elif studies - with_job:
                why = f"{len(studies - with_job)} archived stud(ies) without a job"
            elif not_final:
                why = f"jobs not final: {not_final}"
            else:
                why = self._results_pending(jobs)
            if not why:
                return jobs
            time.sleep(0.5)
        raise AssertionError(f"not quiescent after {timeout:g} s: {why}")

    def _results_pending(self, jobs: list[dict]) -> str:
        for job in jobs:
            if job["status"] != "success":
                continue
            for key, delivered in (("routing", routing_delivered), ("measures", measures_delivered)):
                ok, why = delivered(job.get(key))
                if not ok:
                    return f"job {job['id']} {key}: {why}"
        return ""

    # -- invariants ------------------------------------------------------------------------
    def violations(self, jobs: list[dict]) -> list[str]:
        found: list[str] = []
        archived = self.archived()
        for sop, paths in archived.items():
            if len(paths) > 1:
                found.append(f"instance {sop} archived {len(paths)} times: {paths}")
        for study in self.studies:
            for sop in study.acked:
                if sop not in archived:
                    found.append(f"acknowledged instance {sop} of study {study.station} is not in the archive")
            for sop in set(study.files.values()) - self.read_checked:
                if sop not in archived:
                    continue
                self.read_checked.add(sop)
                try:
                    pydicom.dcmread(archived[sop][0])
                except Exception as exc:
                    found.append(f"archived {archived[sop][0]} does not read: {exc}")
        found += self._job_violations(jobs, archived)
        found += self._report_violations()
        found += self._leftovers(jobs)
        found += self._results_violations(jobs)
        return found

    def _job_violations(self, jobs: list[dict], archived: dict[str, list[Path]]) -> list[str]:
        found = []
        by_study: dict[str, list[dict]] = {}
        for job in jobs:
            by_study.setdefault(job.get("study_uid") or "?", []).append(job)
        for study in self.studies:
            sops = {sop for sop in study.files.values() if sop in archived}
            mine = by_study.get(study.uid, [])
            if not sops:
                if mine:
                    found.append(f"study {study.station}: {len(mine)} job(s) but nothing archived")
                continue
            if len(mine) != 1:
                found.append(f"study {study.station} ({len(sops)} archived instances): {len(mine)} jobs "
                             f"{[(j['id'], j['status']) for j in mine]}, expected exactly one")
                continue
            job = mine[0]
            jobdir = self.layout.job_dir(job["id"])
            if job["status"] != "success":
                found.append(f"study {study.station}: job {job['id']} ended {job['status']}: {job.get('message')}")
            if not (jobdir / "result" / "outcome.json").exists():
                found.append(f"job {job['id']}: no committed result (result/outcome.json)")
            inputs = {p.stem for p in (jobdir / "input").rglob("*.dcm")} if (jobdir / "input").is_dir() else None
            if inputs is not None and inputs != sops:
                found.append(f"job {job['id']}: its input has {len(inputs)} instances, the archive {len(sops)} "
                             f"for study {study.station}")
            count = job.get("instance_count")
            if count is not None and count != len(sops):
                found.append(f"job {job['id']}: instance_count {count}, archived {len(sops)}")
        return found

    def _report_violations(self) -> list[str]:
        found = []
        ingested = self.reports_dir / "ingested"
        failed = self.reports_dir / "failed"
        if failed.exists() and any(failed.iterdir()):
            found.append(f"reports quarantined: {sorted(p.name for p in failed.iterdir())}")
        layout = MetricLayout()
        for report in self.reports[self.checked_reports:]:
            archived = ingested / report.name
            copies = sorted(p.name for p in ingested.glob(report.name.replace(".txt", "*")))
            if len(copies) != 1:
                found.append(f"report {report.name} archived {len(copies)} times: {copies}")
            metrics = report_metrics(read_report(archived if archived.exists() else report.source), SCANNER,
                                     layout, dt.timezone.utc)
            missing = []
            for path, text in zip(metrics.paths, metrics.texts):
                wsp = self.graphite.whisper_path(path)
                try:
                    value = whisper_value_at(wsp, metrics.timestamp) if wsp.exists() else None
                except Exception:
                    value = None
                if value is None or not math.isclose(value, float(text), rel_tol=1e-9, abs_tol=1e-12):
                    missing.append((path, value, text))
            if archived.exists() and missing:
                found.append(f"report {report.name} archived but {len(missing)} of {len(metrics.paths)} datapoints "
                             f"are not in whisper, e.g. {missing[:2]}")
            if not archived.exists() and len(missing) < len(metrics.paths):
                found.append(f"report {report.name} not archived but its datapoints are in whisper")
        self.checked_reports = len(self.reports)
        return found

    def _leftovers(self, jobs: list[dict]) -> list[str]:
        found = []
        tmp = [p.name for p in self.layout.tmp.iterdir()] if self.layout.tmp.is_dir() else []
        if tmp:
            found.append(f"left in {self.layout.tmp}: {tmp[:5]}")
        for job in jobs:
            jobdir = self.layout.job_dir(job["id"])
            left = [p.name for p in jobdir.glob(".input-*")] + [p.name for p in jobdir.glob("active*")]
            if left:
                found.append(f"job {job['id']} ({job['status']}): left {left}")
        scanner_left = [p.name for p in self.reports_dir.iterdir() if p.name not in ("ingested", "failed")]
        if scanner_left:
            found.append(f"left in the scanner directory: {scanner_left}")
        ingested = self.reports_dir / "ingested"
        odd = [p.name for p in ingested.iterdir() if not p.name.startswith("Stability_")] if ingested.is_dir() else []
        if odd:
            found.append(f"temporary files in {ingested}: {odd}")
        return found

    def _results_violations(self, jobs: list[dict]) -> list[str]:
        found = []
        received = self.peer.received_uids()
        by_station = {s.uid: s for s in self.studies}
        for job in jobs:
            if job["status"] != "success":
                continue
            output = self.layout.job_dir(job["id"]) / "result" / "output"
            sop = str(pydicom.dcmread(output / "result.dcm", stop_before_pixels=True).SOPInstanceUID)
            if sop not in received:
                found.append(f"job {job['id']}: routed file result.dcm ({sop}) never reached the PACS")
            ok, why = routing_delivered(job.get("routing"))
            if not ok:
                found.append(f"job {job['id']}: routing record does not say delivered: {why}")
            study = by_station.get(job.get("study_uid") or "")
            measures = json.loads((output / "measures.json").read_text())
            value = float(measures["measures"][0]["value"])
            if study is not None:
                wsp = list(self.graphite.whisper_dir.glob(f"hops/measures/*/{study.station}/instances.wsp"))
                got = whisper_value_at(wsp[0], study.acquired) if wsp else None
                if got != value:
                    found.append(f"job {job['id']}: measure hops.measures.*.{study.station}.instances = {value} "
                                 f"at {study.acquired} not in whisper (found {got}, files {wsp})")
            ok, why = measures_delivered(job.get("measures"))
            if not ok:
                found.append(f"job {job['id']}: measures record: {why}")
        return found

