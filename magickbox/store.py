"""Durable DICOM archive: ``<data>/archive/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

Every instance is written to a temporary file in ``<data>/tmp`` (same filesystem),
fsync'd, renamed into the archive and the directory fsync'd **before** the caller
acknowledges it; a crash leaves at most a ``*.part`` file in ``tmp/`` (removed at the
next start), never a partial file in the archive.  Instances are streamed: a
:class:`SpoolBuffer` keeps a received data set in memory up to a threshold and spills
the rest to a temporary file, and the archive copies spilled data with the kernel
(``os.copy_file_range``/``sendfile``), so a 200 MB instance never sits in memory.

File Meta Information (PS3.10) is written by hand: preamble, ``DICM``, group length,
version, SOP class/instance, transfer syntax, HOPS implementation UID/version and the
sender's AE title; the data set follows byte for byte as received.

**Duplicates** (an instance whose SOP Instance UID is already archived in that series):
identical bytes are acknowledged and counted as a duplicate (nothing written); different
bytes replace the archived file and the previous version is kept in
``<series>/.superseded/<SOPInstanceUID>.<ns>.dcm`` — nothing is ever deleted.
"""
from __future__ import annotations

import enum
import errno
import io
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import __version__

__all__ = ["DicomArchive", "SpoolBuffer", "StoreOutcome", "StoredInstance", "file_meta", "IMPLEMENTATION_UID"]

#: HOPS implementation class UID (a UUID-derived 2.25 root, fixed for the project)
IMPLEMENTATION_UID = "2.25.286417633215823475631227309512830476977"
IMPLEMENTATION_VERSION = ("HOPS_" + __version__.replace(".", ""))[:16]
DEFAULT_SPOOL_THRESHOLD = 16 * 1024 * 1024


class SpoolBuffer(io.BytesIO):
    """Receive buffer: memory up to ``threshold`` bytes, then a temporary file in
    ``spool_dir``.  A ``BytesIO`` subclass because pynetdicom insists on one; only
    ``write``, ``getvalue``, ``seek``/``read``/``tell`` are meaningful."""

    def __init__(self, spool_dir: Path, threshold: int = DEFAULT_SPOOL_THRESHOLD):
        super().__init__()
        self.spool_dir = spool_dir
        self.threshold = threshold
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        self._pos = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        n = len(data)
        if self._file is None and self._size + n > self.threshold:
            self.path = self.spool_dir / f"spool-{uuid.uuid4().hex}.part"
            self._file = open(self.path, "w+b")
            for chunk in self._chunks:
                self._file.write(chunk)
            self._chunks = []
        if self._file is not None:
            self._file.write(data)
        else:
            self._chunks.append(bytes(data))
        self._size += n
        return n

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def chunks(self) -> list[bytes]:
        """The in-memory data (only when not spilled)."""
        return self._chunks

    def spool_file(self) -> BinaryIO:
        assert self._file is not None
        self._file.flush()
        return self._file

    def getvalue(self) -> bytes:
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            return self._file.read()
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def seek(self, offset: int, whence: int = 0) -> int:  # type: ignore[override]
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:  # type: ignore[override]
        return self._pos

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self.getvalue()[self._pos:] if size < 0 else self.getvalue()[self._pos:self._pos + size]
        self._pos += len(data)
        return data

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes (for parsing the header without reading it all)."""
        if self._file is not None:
            self._file.flush()
            return os.pread(self._file.fileno(), size, 0)
        out = bytearray()
        for chunk in self._chunks:
            out += chunk[: size - len(out)]
            if len(out) >= size:
                break
        return bytes(out)

    def discard(self) -> None:
        """Free memory and remove the spill file."""
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                os.unlink(self.path)  # type: ignore[arg-type]
            except OSError:
                pass

    def close(self) -> None:
        self.discard()
        super().close()


def _elem(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (explicit VR little endian)."""
    body = b"".join([
        _elem(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _elem(0x0002, 0x0002, b"UI", _pad(sop_class, b"\x00")),
        _elem(0x0002, 0x0003, b"UI", _pad(sop_instance, b"\x00")),
        _elem(0x0002, 0x0010, b"UI", _pad(transfer_syntax, b"\x00")),
        _elem(0x0002, 0x0012, b"UI", _pad(IMPLEMENTATION_UID, b"\x00")),
        _elem(0x0002, 0x0013, b"SH", _pad(IMPLEMENTATION_VERSION, b" ")),
        *([_elem(0x0002, 0x0016, b"AE", _pad(source_ae.strip()[:16], b" "))] if source_ae.strip() else []),
    ])
    return b"\x00" * 128 + b"DICM" + _elem(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


class StoreOutcome(enum.Enum):
    NEW = "new"
    IDENTICAL = "identical"     # duplicate with identical bytes: nothing written
    REPLACED = "replaced"       # duplicate with different bytes: old version superseded


@dataclass(frozen=True)
class StoredInstance:
    path: Path
    outcome: StoreOutcome
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, buffers: list[bytes]) -> None:
    pending = [memoryview(b) for b in buffers if len(b)]
    while pending:
        written = os.writev(fd, pending[:1024])
        while written and pending:
            head = pending[0]
            if written >= len(head):
                written -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[written:]
                written = 0


def _copy_file(src_fd: int, dst_fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset_src=offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.sendfile(dst_fd, src_fd, offset, size - offset)
        if n == 0:
            raise OSError(errno.EIO, "short copy of spooled data set")
        offset += n


def _same_content(path: Path, header: bytes, body: SpoolBuffer | bytes) -> bool:
    size = len(header) + (body.size if isinstance(body, SpoolBuffer) else len(body))
    try:
        if path.stat().st_size != size:
            return False
        with open(path, "rb") as fh:
            if fh.read(len(header)) != header:
                return False
            if isinstance(body, SpoolBuffer):
                if body.spilled:
                    src = body.spool_file()
                    src.seek(0)
                    while True:
                        a = src.read(1 << 20)
                        if not a:
                            return True
                        if fh.read(len(a)) != a:
                            return False
                for chunk in body.chunks():
                    if fh.read(len(chunk)) != chunk:
                        return False
                return True
            return fh.read() == body
    except OSError:
        return False


class DicomArchive:
    """The archive under ``data_dir``.  Thread-safe."""

    def __init__(self, data_dir: str | Path, fsync: bool = True):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "archive"
        self.tmp = self.data_dir / "tmp"
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        self._locks = [threading.Lock() for _ in range(64)]

    def remove_partial_files(self) -> int:
        """Delete ``*.part`` leftovers of a crash (never in the archive itself)."""
        removed = 0
        for path in self.tmp.glob("*.part"):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def new_spool(self, threshold: int = DEFAULT_SPOOL_THRESHOLD) -> SpoolBuffer:
        return SpoolBuffer(self.tmp, threshold)

    def series_dir(self, study: str, series: str) -> Path:
        return self.root / study / series

    def _ensure_dir(self, path: Path) -> None:
        if path in self._known_dirs:
            return
        with self._dir_lock:
            if path in self._known_dirs:
                return
            for d in (path.parent, path):
                if not d.exists():
                    d.mkdir(exist_ok=True)
                    if self.fsync:
                        _fsync_dir(d.parent)
            self._known_dirs.add(path)

    def store(self, study: str, series: str, sop: str, header: bytes, body: SpoolBuffer | bytes) -> StoredInstance:
        """Durably archive one instance (UIDs must already be validated)."""
        directory = self.series_dir(study, series)
        self._ensure_dir(directory)
        final = directory / f"{sop}.dcm"
        size = len(header) + (body.size if isinstance(body, SpoolBuffer) else len(body))
        tmp = self.tmp / f"{sop}.{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            if isinstance(body, SpoolBuffer) and body.spilled:
                _write_all(fd, [header])
                src = body.spool_file()
                _copy_file(src.fileno(), fd, body.size)
            elif isinstance(body, SpoolBuffer):
                _write_all(fd, [header, *body.chunks()])
            else:
                _write_all(fd, [header, body])
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        lock = self._locks[hash(final) % len(self._locks)]
        with lock:
            outcome = StoreOutcome.NEW
            if final.exists():
                if _same_content(final, header, body):
                    os.unlink(tmp)
                    return StoredInstance(final, StoreOutcome.IDENTICAL, size)
                superseded = directory / ".superseded"
                superseded.mkdir(exist_ok=True)
                os.link(final, superseded / f"{sop}.{time.time_ns()}.dcm")
                if self.fsync:
                    _fsync_dir(superseded)
                outcome = StoreOutcome.REPLACED
            os.rename(tmp, final)
            if self.fsync:
                _fsync_dir(directory)
        return StoredInstance(final, outcome, size)

    def study_counts(self, study: str) -> tuple[int, int]:
        """(series, instances) archived for a study."""
        study_dir = self.root / study
        series = instances = 0
        if not study_dir.is_dir():
            return 0, 0
        for entry in os.scandir(study_dir):
            if entry.is_dir() and not entry.name.startswith("."):
                n = sum(1 for f in os.scandir(entry.path) if f.name.endswith(".dcm") and f.is_file())
                if n:
                    series += 1
                    instances += n
        return series, instances
