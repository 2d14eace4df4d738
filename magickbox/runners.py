"""Run a bucket on one job: in a container (any Docker-API engine, e.g. podman's API
socket) or as a local process.

Both runners give the bucket its input read-only, a fresh output directory and its
persistent memory directory, stream stdout+stderr into ``processing.log`` while it runs,
enforce the bucket's timeout (the run is killed and reported as timed out), honour a
cancel request, and report the exit code.  Whether the run *succeeded* is decided from
the exit code and ``proc.json`` (:func:`magickbox.jobfiles.decide_status`), never by
the runner.

* **ContainerRunner** — ``/input`` (read-only), ``/output``, ``/memory`` bind mounts;
  network off unless the bucket sets ``"network": true``; memory and CPU limits;
  environment; labels ``hops.job`` / ``hops.attempt`` so a container left by a dead
  worker can be found and removed.  An unreachable engine or a missing image is an
  infrastructure error (:class:`RunnerError`), retried by the node.
* **ProcessRunner** — runs the bucket's entry point (``work.sh``) as
  ``ENTRY INPUT OUTPUT MEMORY`` in the bucket directory, with ``INPUT``/``OUTPUT``/
  ``MEMORY`` also in its environment, an address-space limit for ``memory``, in its own
  process group, killed with the worker if the worker dies.  For laptops, CI without a
  container engine and trusted in-house buckets: it does not isolate the network.
  A process runs as the node's user, so no permission can stop it from writing through
  hard links into the archive: its ``INPUT`` is a **private snapshot**
  (:func:`snapshot_input`) — reflinks where the filesystem has them (btrfs, XFS: no extra
  space), otherwise copies — made read-only, in the job directory (``jobs/<id>/.input-*``,
  so ``$INPUT/../info.json`` still works) and removed after the run.  A bucket that
  rewrites its input in place changes only its snapshot.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .buckets import BucketInfo

__all__ = ["RunRequest", "RunResult", "RunnerError", "ContainerRunner", "ProcessRunner", "runner_for",
           "default_engine_url", "snapshot_input", "remove_snapshot"]

log = logging.getLogger("magickbox.runners")


class RunnerError(RuntimeError):
    """The run could not happen (engine unreachable, image missing, entry point missing):
    an infrastructure failure, retried according to the bucket's ``retries``."""


@dataclass
class RunRequest:
    bucket: BucketInfo
    input_dir: Path
    output_dir: Path
    memory_dir: Path
    log_path: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    cancel_requested: Callable[[], bool] = lambda: False
    #: where the process runner puts its private input copy (default: next to the output)
    scratch_dir: Path | None = None


@dataclass
class RunResult:
    exit_code: int | None
    timed_out: bool
    cancelled: bool
    started: float
    finished: float


def default_engine_url() -> str:
    """``$DOCKER_HOST``, else podman's rootful socket, else Docker's."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for sock in ("/run/podman/podman.sock", "/var/run/docker.sock"):
        if os.path.exists(sock):
            return f"unix://{sock}"
    return "unix:///run/podman/podman.sock"


class ContainerRunner:
    def __init__(self, engine_url: str | None = None, poll_seconds: float = 0.1):
        self.engine_url = engine_url or default_engine_url()
        self.poll_seconds = poll_seconds
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                import docker
                try:
                    self._client = docker.DockerClient(base_url=self.engine_url, timeout=120)
                    self._client.ping()
                except Exception as exc:
                    self._client = None
                    raise RunnerError(f"container engine not reachable at {self.engine_url}: {exc}") from None
            return self._client

    def remove_containers(self, **labels: str) -> int:
        """Kill and remove containers with these labels (left by a dead worker)."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        removed = 0
        try:
            for c in self.client().containers.list(all=True, filters=filters):
                try:
                    c.remove(force=True)
                    removed += 1
                except Exception:
                    pass
        except RunnerError:
            pass
        return removed

    def run(self, req: RunRequest) -> RunResult:
        import docker.errors
        spec = req.bucket.run
        client = self.client()
        volumes = {
            str(req.input_dir): {"bind": "/input", "mode": "ro"},
            str(req.output_dir): {"bind": "/output", "mode": "rw"},
            str(req.memory_dir): {"bind": "/memory", "mode": "rw"},
        }
        kwargs = dict(volumes=volumes, detach=True, labels={"hops": "bucket", **req.labels},
                      environment={"INPUT": "/input", "OUTPUT": "/output", "MEMORY": "/memory", **spec.environment},
                      network_mode=None if spec.network else "none")
        if spec.memory:
            kwargs["mem_limit"] = spec.memory
        if spec.cpus:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        try:
            container = client.containers.run(spec.image, list(spec.command) if spec.command else None, **kwargs)
        except docker.errors.ImageNotFound:
            raise RunnerError(f"image {spec.image!r} of bucket {req.bucket.ae_title} not found") from None
        except docker.errors.APIError as exc:
            raise RunnerError(f"cannot start a container for {req.bucket.ae_title}: {exc}") from None
        except Exception as exc:   # requests' connection errors and the like
            raise RunnerError(f"container engine failed: {exc}") from None
        started = time.time()
        log_thread = threading.Thread(target=self._copy_logs, args=(container, req.log_path), daemon=True)
        log_thread.start()
        timed_out = cancelled = False
        exit_code: int | None = None
        deadline = time.monotonic() + spec.timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if req.cancel_requested():
                    cancelled = True
                    break
                try:
                    status = container.wait(timeout=min(remaining, 1.0))
                    exit_code = int(status.get("StatusCode", -1))
                    break
                except Exception:   # wait timed out (requests ReadTimeout / ConnectionError)
                    continue
            if exit_code is None:
                try:
                    container.kill()
                except Exception:
                    pass
                try:
                    exit_code = int(container.wait(timeout=30).get("StatusCode", -1))
                except Exception:
                    exit_code = None
        finally:
            finished = time.time()
            log_thread.join(10)
            try:
                container.remove(force=True)
            except Exception:
                pass
        return RunResult(exit_code, timed_out, cancelled, started, finished)

    @staticmethod
    def _copy_logs(container, path: Path) -> None:
        try:
            with open(path, "ab") as fh:
                for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    fh.write(chunk)
                    fh.flush()
        except Exception as exc:
            log.debug("log stream ended: %s", exc)


_PR_SET_PDEATHSIG = 1
_FICLONE = 0x40049409          # ioctl: share the source's blocks (reflink)


def _clone_file(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` that shares nothing writable with it: a
    reflink where the filesystem supports one, else a kernel copy."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                 errno.EPERM):
                raise
        size = os.fstat(src.fileno()).st_size
        offset = 0
        try:
            while offset < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - offset, offset_src=offset)
                if n == 0:
                    break
                offset += n
        except OSError:
            dst.seek(0)
            dst.truncate()
            src.seek(0)
            shutil.copyfileobj(src, dst, 1 << 20)
            offset = size
        if offset != size:
            raise OSError(errno.EIO, f"short copy of {source}")


def snapshot_input(source: Path, parent: Path) -> Path:
    """A private, read-only copy of the input tree ``source`` in a new directory under
    ``parent`` (same filesystem as the job, so reflinks work).  Raises RunnerError."""
    target = parent / f".input-{uuid.uuid4().hex[:8]}"
    try:
        target.mkdir(mode=0o750)
        if source.is_dir():
            for directory, dirs, files in os.walk(source):
                rel = Path(directory).relative_to(source)
                here = target / rel
                for d in dirs:
                    (here / d).mkdir(mode=0o750)
                for f in files:
                    _clone_file(Path(directory) / f, here / f)
                    os.chmod(here / f, 0o440)
        for directory, dirs, _ in os.walk(target, topdown=False):
            os.chmod(directory, 0o550)
    except OSError as exc:
        remove_snapshot(target)
        raise RunnerError(f"cannot make the private input copy for the process runner: {exc}") from None
    return target


def remove_snapshot(path: Path) -> None:
    """Delete a snapshot made by :func:`snapshot_input` (even where a bucket made it
    read-only or added files)."""
    if not path.exists():
        return
    for directory, _, _ in os.walk(path):
        try:
            os.chmod(directory, stat.S_IRWXU)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def _child_setup(memory: int | None) -> Callable[[], None]:
    def setup() -> None:
        try:   # die with the worker
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return setup


class ProcessRunner:
    def __init__(self, poll_seconds: float = 0.05):
        self.poll_seconds = poll_seconds

    def run(self, req: RunRequest) -> RunResult:
        spec = req.bucket.run
        entry = (req.bucket.directory / (spec.entrypoint or "work.sh")).resolve()
        if not entry.is_file() or not os.access(entry, os.X_OK):
            raise RunnerError(f"entry point {entry} of bucket {req.bucket.ae_title} is missing or not executable")
        private_input = snapshot_input(req.input_dir, req.scratch_dir or req.output_dir.parent)
        try:
            return self._run(req, entry, private_input)
        finally:
            remove_snapshot(private_input)

    def _run(self, req: RunRequest, entry: Path, input_dir: Path) -> RunResult:
        spec = req.bucket.run
        env = dict(os.environ, INPUT=str(input_dir), OUTPUT=str(req.output_dir), MEMORY=str(req.memory_dir),
                   **spec.environment)
        with open(req.log_path, "ab") as log_file:
            try:
                proc = subprocess.Popen([str(entry), str(input_dir), str(req.output_dir), str(req.memory_dir)],
                                        cwd=req.bucket.directory, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_child_setup(spec.memory))
            except OSError as exc:
                raise RunnerError(f"cannot start {entry}: {exc}") from None
        started = time.time()
        deadline = time.monotonic() + spec.timeout
        timed_out = cancelled = False
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                timed_out = True
            elif req.cancel_requested():
                cancelled = True
            if timed_out or cancelled:
                self._kill(proc)
                break
            try:
                proc.wait(self.poll_seconds)
            except subprocess.TimeoutExpired:
                pass
        proc.wait()
        return RunResult(proc.returncode, timed_out, cancelled, started, time.time())

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue


def runner_for(bucket: BucketInfo, engine_url: str | None = None,
               cache: dict[str, object] | None = None):
    """The runner a bucket asks for (one ContainerRunner per engine URL in ``cache``)."""
    if bucket.run.runner == "process":
        return ProcessRunner()
    cache = cache if cache is not None else {}
    url = engine_url or default_engine_url()
    if url not in cache:
        cache[url] = ContainerRunner(url)
    return cache[url]
