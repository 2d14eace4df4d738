"""Helpers for DICOM tests: generated studies, dcmtk as the foreign peer, and a
``magickbox serve`` process on free loopback ports (stopped by PID)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from magickbox.layout import DataLayout
from stability_collector.localgraphite import free_port, wait_for_port

MAGICKBOX = shutil.which("magickbox", path=os.path.dirname(sys.executable)) or "magickbox"

#: storescu flag proposing a file's (compressed) transfer syntax
STORESCU_TS_FLAGS = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def make_study(directory: Path, count: int, study_uid: str | None = None, series_per_study: int = 1,
               template: str = "MR_small.dcm", **tags: object) -> list[Path]:
    """``count`` instances (copies of a pydicom test file with fresh UIDs) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file(template))
    if (0xFFFC, 0xFFFC) in base:       # dcmtk drops trailing padding when sending
        del base[0xFFFCFFFC]
    study_uid = study_uid or generate_uid()
    series_uids = [generate_uid() for _ in range(series_per_study)]
    files = []
    for i in range(count):
        ds = base.copy()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids[i % series_per_study]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        for key, value in tags.items():
            setattr(ds, key, value)
        path = directory / f"img{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def storescu(port: int, called: str, files: list[Path] | list[str], calling: str = "SCANNER",
             extra: list[str] | None = None, check: bool = True, timeout: float = 300,
             env_nodelay: bool = True) -> subprocess.CompletedProcess:
    args = ["storescu", "-v", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port),
            *map(str, files)]
    env = dict(os.environ, TCP_NODELAY="1") if env_nodelay else None
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def acknowledged_files(storescu_output: str) -> list[Path]:
    """The files ``storescu -v`` got a Success response for."""
    import re
    acked, current = [], None
    for line in storescu_output.splitlines():
        m = re.search(r"Sending file: (\S+)", line)
        if m:
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            acked.append(Path(current))
    return acked


def dataset_bytes(path: Path) -> bytes:
    """The data set of a DICOM file, after its File Meta Information."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    return path.read_bytes()[meta_end:]


def write_bucket(buckets_dir: Path, ae_title: str, enabled: bool = True, name: str | None = None, **extra: object) -> Path:
    directory = buckets_dir / (name or ae_title.lower())
    directory.mkdir(parents=True, exist_ok=True)
    info = {"name": name or ae_title, "description": f"test bucket {ae_title}", "version": "1.0",
            "AETitle": ae_title, "license": "MIT", "enabled": 1 if enabled else 0, **extra}
    (directory / "info.json").write_text(json.dumps(info))
    return directory


def process_bucket(buckets: Path, ae: str, script: str, **run) -> Path:
    """A process-runner bucket whose work.sh is ``script`` (a ``#!/bin/sh`` line is added
    unless it has one)."""
    directory = write_bucket(buckets, ae, run={"runner": "process", **run})
    (directory / "work.sh").write_text(script if script.startswith("#!") else "#!/bin/sh\n" + script)
    (directory / "work.sh").chmod(0o755)
    return directory


class MagickboxProcess:
    """``magickbox serve`` in a subprocess with its own data dir and free ports."""

    def __init__(self, data_dir: Path, quiet_seconds: float = 1.0, config: dict | None = None,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None, wrapper: list[str] | None = None):
        self.data_dir = data_dir
        self.env, self.cwd, self.wrapper = env, cwd, wrapper or []     # wrapper: e.g. strace and its flags
        self.quiet_seconds = quiet_seconds
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config = config
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.token: str | None = None        # an admin API token, made at the first start

    def start(self, wait: bool = True) -> "MagickboxProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.token is None:
            from magickbox.api.tokens import TokenStore
            self.token = TokenStore(DataLayout.of(self.data_dir).api_tokens).create(f"tests-{os.urandom(4).hex()}", "admin")
        args = [MAGICKBOX, "serve", "--data-dir", str(self.data_dir), "--dicom-port", str(self.dicom_port),
                "--dicom-host", "127.0.0.1", "--http-port", str(self.http_port),
                "--quiet-seconds", str(self.quiet_seconds), "--node-name", "testnode", *self.extra_args]
        if self.config is not None:
            cfg = self.data_dir.parent / f"{self.data_dir.name}.toml"
            cfg.write_text(_toml(self.config))
            args += ["--config", str(cfg)]
        self.proc = subprocess.Popen([*self.wrapper, *args], stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd)
        if wait:
            wait_for_port(self.dicom_port, proc=self.proc, what="magickbox", log=self.log_path)
            wait_for_port(self.http_port, proc=self.proc, what="magickbox http", log=self.log_path)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api(self, path: str):
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)

    def jobs(self) -> list[dict]:
        """Every job with its detail (the list leaves study UIDs out; an admin's detail has them)."""
        return [self.api(f"/api/jobs/{j['id']}") for j in sorted(self.api("/api/jobs"), key=lambda j: j["id"])]

    def wait_jobs(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        jobs: list[dict] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if len(jobs) >= count:
                return jobs
            time.sleep(0.2)
        raise AssertionError(f"expected {count} job(s), have {len(jobs)}: {jobs}\n{self.log()[-3000:]}")

    def wait_final(self, count: int, timeout: float = 120) -> list[dict]:
        """At least ``count`` jobs, all in a final status (their details)."""
        from magickbox.model import FINAL_STATUSES
        deadline = time.monotonic() + timeout
        jobs: list[dict] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if len(jobs) >= count and all(j["status"] in FINAL_STATUSES for j in jobs):
                return jobs
            time.sleep(0.2)
        raise AssertionError(f"jobs not final: {[(j['id'], j['status']) for j in jobs]}\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def archived(self) -> list[Path]:
        root = DataLayout.of(self.data_dir).archive
        return sorted(p for p in root.rglob("*.dcm") if ".superseded" not in p.parts)


def _toml(data: dict, prefix: str = "") -> str:
    scalars = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        out += f"\n[{name}]\n" + _toml(value, name)
    return out


def stop_process(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the exit."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class StorescpPeer:
    """dcmtk ``storescp`` as a receiving PACS on a free loopback port, storing every
    instance under ``out`` as received (``+B``); stopped by PID.  ``accept_all`` proposes
    every transfer syntax (``+xa``); without it storescp takes only uncompressed ones."""

    def __init__(self, out: Path, ae_title: str = "PACS", accept_all: bool = True):
        self.out, self.ae_title, self.accept_all = out, ae_title, accept_all
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StorescpPeer":
        self.out.mkdir(parents=True, exist_ok=True)
        args = ["/usr/bin/storescp", "+B", *(["+xa"] if self.accept_all else []), "-aet", self.ae_title,
                "-od", str(self.out), str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, TCP_NODELAY="1"))
        wait_for_port(self.port, proc=self.proc, what="storescp")
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def received_uids(self) -> set[str]:
        """SOP Instance UIDs of everything stored so far."""
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in self.out.iterdir() if p.is_file()}

    def __enter__(self) -> "StorescpPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OrthancPeer:
    """A private Orthanc (Debian ``orthanc``) on free loopback ports: a real PACS that
    receives by C-STORE and tells over its REST API what it holds; stopped by PID."""

    def __init__(self, directory: Path, ae_title: str = "ORTHANC", modalities: dict | None = None):
        self.directory, self.ae_title = directory, ae_title
        self.http_port, self.dicom_port = free_port(), free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OrthancPeer":
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {"Name": "HOPS-TEST", "StorageDirectory": str(self.directory / "db"),
                  "IndexDirectory": str(self.directory / "db"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": self.ae_title, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "HttpBindAddress": "127.0.0.1",
                  "DicomModalities": self.modalities, "Plugins": []}
        path = self.directory / "orthanc.json"
        path.write_text(json.dumps(config))
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.log = open(self.directory / "orthanc.log", "wb")
        self.proc = subprocess.Popen([exe, str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.http_port, proc=self.proc, what="Orthanc (HTTP)")
        wait_for_port(self.dicom_port, proc=self.proc, what="Orthanc (DICOM)")
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def received_uids(self) -> set[str]:
        """SOP Instance UIDs of every instance Orthanc holds."""
        return {self.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in self.get("/instances")}

    def instance_file(self, sop_instance_uid: str) -> bytes:
        found = [i for i in self.get("/instances")
                 if self.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] == sop_instance_uid]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/instances/{found[0]}/file",
                                    timeout=30) as resp:
            return resp.read()

    def __enter__(self) -> "OrthancPeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def associate_rq(called: str = "ProcQA", calling: str = "SCANNER", calling_raw: bytes | None = None) -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing Verification (``calling_raw`` replaces the
    16 bytes of the calling AE title, bypassing any validation)."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification
    primitive = A_ASSOCIATE()
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    data = bytearray(pdu.encode())
    if calling_raw is not None:
        data[26:42] = calling_raw.ljust(16, b" ")[:16]
    return bytes(data)
