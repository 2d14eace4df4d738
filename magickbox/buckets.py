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

from stability_collector.metrics import ConfigError

__all__ = ["BucketInfo", "BucketRegistry", "BucketError", "load_bucket_info", "parse_enabled"]

_AE_RE = re.compile(r"[\x20-\x7e]{1,16}")
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
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def info_path(self) -> Path:
        return self.directory / "info.json"


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
    if not isinstance(ae, str) or not _AE_RE.fullmatch(ae.strip()) or "\\" in ae:
        raise BucketError(path, "AETitle", f"not a DICOM AE title (1-16 printable characters): {ae!r}")
    enabled = parse_enabled(data["enabled"])
    if enabled is None:
        raise BucketError(path, "enabled", f"expected 1/0, true/false or T/F, found {data['enabled']!r}")
    return BucketInfo(directory, data["name"], data["description"], data["version"], ae.strip(),
                      data["license"], enabled, data)


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

    def refresh(self) -> None:
        """Re-read if something changed; a bad edit keeps the last good set (and is
        reported in ``last_error``) instead of taking every bucket offline."""
        now = time.monotonic()
        if now - self._checked < self.refresh_seconds:
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
