"""Processing buckets: directories with MagickBox's ``info.json``.

``<buckets_dir>/<directory>/info.json``::

    {"name": "My stream", "description": "DICOM images are processed.",
     "version": "0.0.1", "AETitle": "ProcPics", "license": "...", "enabled": 1}

The called AE title of an association selects the bucket.  ``enabled`` accepts 1/0,
true/false and MagickBox's "T"/"F".  A malformed ``info.json`` is an error naming the
file and the key; two buckets with the same AE title are an error.  The registry
re-reads the directory when it changes, so installing or enabling a bucket needs no
restart.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stability_collector.core.errors import ConfigError

from .model import AE_TITLE
from .results.measure_stage import parse_bucket_measures

__all__ = ["BucketInfo", "BucketRegistry", "BucketError", "RunSpec", "load_bucket_info", "parse_enabled",
           "parse_size"]

REQUIRED_KEYS = ("name", "description", "version", "AETitle", "license", "enabled")


class BucketError(ConfigError):
    """A bucket directory or its info.json is invalid."""

    def __init__(self, path: Path, key: str, message: str):
        self.path = path
        super().__init__(f"{path}: {key}", message)


def parse_enabled(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "t", "yes", "y", "on"):
            return True
        if text in ("0", "false", "f", "no", "n", "off", ""):
            return False
    return None


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", re.IGNORECASE)


def parse_size(text: Any) -> int | None:
    """``"512m"``, ``"2g"``, ``1073741824`` -> bytes; ``None``/``""`` -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    m = _SIZE_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"not a size like 512m or 2g: {text!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))


@dataclass(frozen=True)
class RunSpec:
    """How a bucket runs: the ``"run"`` object of its info.json (HOPS extension; every
    key optional)::

        "run": {"runner": "container",          # or "process"
                "image": "localhost/procqa:1",   # container image
                "command": ["/bin/sh", "/work.sh"],  # default: the image's command
                "entrypoint": "work.sh",         # process runner: called with INPUT OUTPUT MEMORY
                "timeout": 3600,                 # seconds, then killed and marked timeout
                "memory": "2g", "cpus": 1.5,     # limits
                "network": false,                # containers have no network unless true
                "environment": {"KEY": "value"},
                "concurrency": 1,                # jobs of this bucket at once per worker
                "retries": 2,                    # re-runs after infrastructure failures
                "input": "delivered"}            # or "study": the whole archived study, granted
                                                 # only to callers the node trusts with it
                                                 # (dicom.access.<AE>.whole_study_callers)

    Without a ``"run"`` object a bucket with a ``work.sh`` in its directory uses the
    process runner, otherwise the container runner with image ``localhost/<directory>``.
    """

    runner: str
    image: str | None
    command: tuple[str, ...] | None
    entrypoint: str | None
    timeout: float
    memory: int | None
    cpus: float | None
    network: bool
    environment: Mapping[str, str]
    concurrency: int
    retries: int
    input: str = "delivered"


def _parse_run(directory: Path, path: Path, run: Any) -> RunSpec:
    if run is None:
        run = {}
    if not isinstance(run, dict):
        raise BucketError(path, "run", "expected an object")
    known = {"runner", "image", "command", "entrypoint", "timeout", "memory", "cpus", "network", "environment",
             "concurrency", "retries", "input"}
    unknown = set(run) - known
    if unknown:
        raise BucketError(path, f"run.{sorted(unknown)[0]}", f"unknown setting; known: {', '.join(sorted(known))}")
    default_runner = "process" if (directory / "work.sh").exists() and "image" not in run else "container"
    runner = run.get("runner", default_runner)
    if runner not in ("container", "process"):
        raise BucketError(path, "run.runner", f"expected 'container' or 'process', found {runner!r}")
    image = run.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise BucketError(path, "run.image", f"expected an image name, found {image!r}")
    if runner == "container" and image is None:
        image = f"localhost/{directory.name.lower()}:latest"
    command = run.get("command")
    if command is not None:
        if isinstance(command, str):
            command = [command]
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command) or not command:
            raise BucketError(path, "run.command", f"expected a list of strings, found {command!r}")
    entrypoint = run.get("entrypoint", "work.sh" if runner == "process" else None)
    if runner == "process":
        target = (directory / str(entrypoint)).resolve()
        if directory.resolve() not in target.parents:
            raise BucketError(path, "run.entrypoint", f"must be a file inside the bucket directory: {entrypoint!r}")
    numbers: dict[str, float | None] = {}
    lows: tuple[tuple[str, float | None, float], ...] = (("timeout", 3600.0, 0.1), ("cpus", None, 0.01),
                                                         ("concurrency", 1, 1), ("retries", 2, 0))
    for key, default, lo in lows:
        value = run.get(key, default)
        if value is None:
            numbers[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
            raise BucketError(path, f"run.{key}", f"expected a number >= {lo:g}, found {value!r}")
        numbers[key] = value
    try:
        memory = parse_size(run.get("memory"))
    except ValueError as exc:
        raise BucketError(path, "run.memory", str(exc)) from None
    network = run.get("network", False)
    if not isinstance(network, bool):
        raise BucketError(path, "run.network", f"expected true or false, found {network!r}")
    env = run.get("environment", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                            for k, v in env.items()):
        raise BucketError(path, "run.environment", "expected an object of NAME: value")
    scope = run.get("input", "delivered")
    if scope not in ("delivered", "study"):
        raise BucketError(path, "run.input", f"expected 'delivered' or 'study', found {scope!r}")
    return RunSpec(runner, image, tuple(command) if command else None, entrypoint, float(numbers["timeout"] or 0),
                   memory, numbers["cpus"], network, {k: str(v) for k, v in env.items()},
                   int(numbers["concurrency"] or 1), int(numbers["retries"] or 0), scope)


@dataclass(frozen=True)
class BucketInfo:
    """A bucket's identity (MagickBox ``info.json``) plus where it lives.  ``raw`` keeps
    every key of the file (later stages read their own keys from it)."""

    directory: Path
    name: str
    description: str
    version: str
    ae_title: str
    license: str
    enabled: bool
    run: RunSpec
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def info_path(self) -> Path:
        return self.directory / "info.json"

    @property
    def function(self) -> str:
        """The gearman function of this bucket (MagickBox's ``bucket<AETitle>``)."""
        return f"bucket{self.ae_title}"

    @property
    def memory_dir(self) -> Path:
        """Persistent across runs; mounted as ``/memory``."""
        return self.directory / "memory"


def load_bucket_info(directory: Path) -> BucketInfo:
    path = directory / "info.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BucketError(path, "info.json", f"cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise BucketError(path, "info.json", f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise BucketError(path, "info.json", "expected a JSON object")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise BucketError(path, key, "missing")
    for key in ("name", "description", "version", "license"):
        if not isinstance(data[key], str):
            raise BucketError(path, key, f"expected a string, found {data[key]!r}")
    ae = data["AETitle"]
    if not isinstance(ae, str) or not AE_TITLE.fullmatch(ae.strip()) or "\\" in ae:
        raise BucketError(path, "AETitle", f"not a DICOM AE title (1-16 printable characters): {ae!r}")
    enabled = parse_enabled(data["enabled"])
    if enabled is None:
        raise BucketError(path, "enabled", f"expected 1/0, true/false or T/F, found {data['enabled']!r}")
    try:
        parse_bucket_measures(data.get("measures"))
    except ConfigError as exc:
        raise BucketError(path, exc.key, str(exc).removeprefix(f"{exc.key}: ")) from None
    return BucketInfo(directory, data["name"], data["description"], data["version"], ae.strip(),
                      data["license"], enabled, _parse_run(directory, path, data.get("run")), data)


class BucketRegistry:
    """All buckets under ``root``, re-read when a bucket directory or info.json changes."""

    def __init__(self, root: Path, refresh_seconds: float = 1.0):
        self.root = Path(root)
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._by_ae: dict[str, BucketInfo] = {}
        self._checked = 0.0
        self.last_error: str | None = None

    def _current_signature(self) -> tuple[Any, ...]:
        if not self.root.is_dir():
            return ()
        sig = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            info = Path(entry.path) / "info.json"
            try:
                st = info.stat()
                sig.append((entry.name, st.st_mtime_ns, st.st_size))
            except OSError:
                continue
        return tuple(sig)

    def load(self) -> dict[str, BucketInfo]:
        """(Re)read every bucket; raises :class:`BucketError` on the first bad one."""
        buckets: dict[str, BucketInfo] = {}
        if self.root.is_dir():
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                if not entry.is_dir() or entry.name.startswith(".") or not (Path(entry.path) / "info.json").exists():
                    continue
                info = load_bucket_info(Path(entry.path))
                other = buckets.get(info.ae_title)
                if other is not None:
                    raise BucketError(info.info_path, "AETitle",
                                      f"{info.ae_title!r} is already used by {other.info_path}")
                buckets[info.ae_title] = info
        with self._lock:
            self._by_ae = buckets
            self._signature = self._current_signature()
            self._checked = time.monotonic()
        return buckets

    def refresh(self, force: bool = False) -> None:
        """Re-read if something changed; a bad edit keeps the last good set (and is
        reported in ``last_error``) instead of taking every bucket offline."""
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_seconds:
            return
        self._checked = now
        if self._current_signature() == self._signature:
            return
        try:
            self.load()
            self.last_error = None
        except ConfigError as exc:
            self.last_error = str(exc)

    def all(self) -> list[BucketInfo]:
        self.refresh()
        with self._lock:
            return list(self._by_ae.values())

    def by_ae_title(self, ae_title: str) -> BucketInfo | None:
        self.refresh()
        with self._lock:
            return self._by_ae.get(ae_title.strip())

    def find(self, name_or_ae: str) -> BucketInfo | None:
        for b in self.all():
            if name_or_ae in (b.ae_title, b.directory.name, b.name):
                return b
        return None
