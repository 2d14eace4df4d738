"""Series records: MagickBox's ``views/raw/<StudyUID>/<SeriesUID>.json``.

One JSON object per series with its series-level DICOM tags (values as text, multi-valued
elements as lists, like MagickBox), ``NumFiles`` (instances archived, as text) and
``ClassifyType`` (the types from ``classifyRules.json``).  Updated in memory for every
archived instance and written whenever its classification changes, at most
``write_interval`` seconds after any other change, when the association ends and before
the study's job is created; every write replaces the file atomically (temporary file,
rename), so a reader never sees a half-written record.  Records are derived data:
``rebuild`` recreates them from the archive.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

from pydicom.multival import MultiValue

from stability_collector.core.fsutil import atomic_write

from .classify import ClassifyRules, instance_lookup
from .layout import DataLayout
from .store import DIR_MODE, FILE_MODE, make_private_dir

__all__ = ["SeriesRecords", "SERIES_TAGS", "record_value"]

#: Series-level tags copied from the first instance of a series (keyword -> record key).
SERIES_TAGS = {
    "StudyInstanceUID": "StudyInstanceUID",
    "SeriesInstanceUID": "SeriesInstanceUID",
    "SOPClassUID": "SOPClassUID",
    "Modality": "Modality",
    "Manufacturer": "Manufacturer",
    "ManufacturerModelName": "ManufacturerModelName",
    "StationName": "StationName",
    "StudyDate": "StudyDate",
    "StudyTime": "StudyTime",
    "StudyDescription": "StudyDescription",
    "SeriesDate": "SeriesDate",
    "SeriesTime": "SeriesTime",
    "SeriesDescription": "SeriesDescription",
    "SeriesNumber": "SeriesNumber",
    "ProtocolName": "ProtocolName",
    "BodyPartExamined": "BodyPartExamined",
    "MagneticFieldStrength": "MagneticFieldStrength",
    "EchoTime": "EchoTime",
    "RepetitionTime": "RepetitionTime",
    "InversionTime": "InversionTime",
    "FlipAngle": "FlipAngle",
    "SliceThickness": "SliceThickness",
    "SpacingBetweenSlices": "SliceSpacing",
    "PixelSpacing": "PixelSpacing",
    "Rows": "Rows",
    "Columns": "Columns",
    "ImageOrientationPatient": "ImageOrientationPatient",
    "PatientID": "PatientID",
    "PatientName": "PatientName",
}


def record_value(value: Any) -> Any:
    """A DICOM value the way MagickBox's records hold it: text, or a list of text."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ")
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return str(value)          # str, numbers, PersonName, DSfloat ...


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Series records are rewritten often while a series arrives: atomic, not fsync'd
    (the archived instances are durable; a record lost in a crash is rewritten by the
    next instance of its series)."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True), FILE_MODE, durable=False)


class SeriesRecords:
    """Keeps the series records of ``<data>/views/raw`` current.  Thread-safe."""

    def __init__(self, layout: DataLayout, rules: ClassifyRules, write_interval: float = 0.5, shared: bool = False):
        """``shared``: other processes (the node's other receivers) update the same
        records; every write then merges ``NumFiles`` with the file under a lock."""
        self.root = layout.series_views
        make_private_dir(self.root.parent)
        make_private_dir(self.root)
        self.rules = rules
        self.write_interval = write_interval
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._written: dict[tuple[str, str], float] = {}     # key -> time of the last write
        self._dirty: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self.shared = shared
        self._unwritten_files: dict[tuple[str, str], int] = {}   # NumFiles counted since the last write
        self._lock_fd: int | None = None

    def path(self, study: str, series: str) -> Path:
        return self.root / study / f"{series}.json"

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def _load(self, study: str, series: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path(study, series).read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def update(self, study: str, series: str, dataset: Any, new_file: bool) -> list[str]:
        """Account for one archived instance (``dataset``: its header as a pydicom
        Dataset); returns the series' ClassifyType."""
        key = (study, series)
        with self._lock(key):
            record = self._records.get(key) or self._load(study, series)
            if record is None:
                record = {"NumFiles": "0", "ClassifyType": []}
                for keyword, name in SERIES_TAGS.items():
                    elem = dataset.get(keyword) if hasattr(dataset, "get") else None
                    if elem is not None:
                        record[name] = record_value(elem)
            is_new = key not in self._written
            if new_file:
                record["NumFiles"] = str(int(record.get("NumFiles", "0") or 0) + 1)
                self._unwritten_files[key] = self._unwritten_files.get(key, 0) + 1
            before = record.get("ClassifyType")
            record["ClassifyType"] = self.rules.evaluate(record, instance_lookup(dataset))
            self._records[key] = record
            now = time.monotonic()
            if is_new or before != record["ClassifyType"] or now - self._written.get(key, 0.0) >= self.write_interval:
                self._write(key, record, now)
            else:
                with self._guard:
                    self._dirty.add(key)
            return list(record["ClassifyType"])

    def _write(self, key: tuple[str, str], record: dict[str, Any], now: float) -> None:
        (self.root / key[0]).mkdir(mode=DIR_MODE, exist_ok=True)
        added = self._unwritten_files.pop(key, 0)
        if self.shared:
            with self._cross_process_lock(zlib.crc32("/".join(key).encode()) % 1024):   # same in every process
                on_disk = self._load(*key)
                if on_disk is not None:
                    record["NumFiles"] = str(int(on_disk.get("NumFiles", "0") or 0) + added)
                _write_json_atomic(self.path(*key), record)
        else:
            _write_json_atomic(self.path(*key), record)
        self._written[key] = now
        with self._guard:
            self._dirty.discard(key)

    @contextlib.contextmanager
    def _cross_process_lock(self, slot: int) -> Iterator[None]:
        with self._guard:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.root / ".records.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX, 1, slot)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, slot)

    def flush(self, study: str | None = None) -> None:
        """Write every record with unwritten changes (of one study, or all)."""
        with self._guard:
            keys = [k for k in self._dirty if study is None or k[0] == study]
        for key in keys:
            with self._lock(key):
                record = self._records.get(key)
                if record is not None and key in self._dirty:
                    self._write(key, record, time.monotonic())
        if study is None and len(self._records) > 4096:
            with self._guard:
                for key in [k for k in self._records if k not in self._dirty]:
                    del self._records[key]
                    self._written.pop(key, None)

    def study_classification(self, study: str) -> dict[str, list[str]]:
        """{SeriesInstanceUID: ClassifyType} of a study's records."""
        self.flush(study)
        out = {}
        directory = self.root / study
        if directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                out[path.stem] = list(data.get("ClassifyType", []))
        return out


