"""Durable DICOM archive: ``<data>/archive/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

Every instance is written to an anonymous file in its series directory (``O_TMPFILE``),
fsync'd, linked under its name (``linkat``, which never replaces a file) and the
directory fsync'd **before** the caller acknowledges it; a crash leaves nothing of it.
Where the filesystem does not allow that (no ``O_TMPFILE``, no ``/proc`` to link
it through), the file is a ``*.part`` file in
``<data>/tmp`` (same filesystem), renamed into the archive instead; a crash leaves at
most that ``*.part`` file (removed at the next start), never a partial file in the
archive.  Instances are streamed: a
:class:`SpoolBuffer` keeps a received data set in memory up to a threshold and spills
the rest to a temporary file, and the archive copies spilled data with the kernel
(``os.copy_file_range``/``sendfile``), so a 200 MB instance never sits in memory.

File Meta Information (PS3.10) is written by hand: preamble, ``DICM``, group length,
version, SOP class/instance, transfer syntax, HOPS implementation UID/version and the
sender's AE title; the data set follows byte for byte as received.

**Duplicates** (an instance whose SOP Instance UID is already archived in that series):
an identical data set (compared after the File Meta Information, which names the sender,
in the same transfer syntax) is acknowledged and counted as a duplicate, whoever sends it
(nothing written).  A different data set replaces the archived file only as the
``replace`` policy allows — by default (``"same-sender"``) only when it comes from the
calling AE title that sent the archived copy (a scanner correcting its own instance);
from anyone else it is refused (:attr:`StoreOutcome.REFUSED`, nothing written), because
an AE title that could call the node would otherwise overwrite another scanner's data.
``"never"`` refuses every change, ``"any"`` accepts every change.  A replaced version is
kept in ``<series>/.superseded/<SOPInstanceUID>.<ns>.dcm`` — nothing is ever deleted.

**Permissions.**  Everything under the data root that holds patient data is private to
the node's user and group: files ``0640`` (:data:`FILE_MODE`), directories ``0750``
(:data:`DIR_MODE`).  The ``magickbox`` commands also set the umask ``027``
(:func:`private_umask`), which covers what other code creates (SQLite, bucket output).
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import io
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from stability_collector.core.fsutil import fsync_dir

from . import __version__
from .layout import DataLayout

__all__ = ["DicomArchive", "SpoolBuffer", "SpoolBudget", "StoreOutcome", "StoredInstance", "file_meta",
           "IMPLEMENTATION_UID", "FILE_MODE", "DIR_MODE", "private_umask", "make_private_dir", "read_stored_meta",
           "REPLACE_POLICIES"]

#: HOPS implementation class UID (a UUID-derived 2.25 root, fixed for the project)
IMPLEMENTATION_UID = "2.25.286417633215823475631227309512830476977"
IMPLEMENTATION_VERSION = ("HOPS_" + __version__.replace(".", ""))[:16]
DEFAULT_SPOOL_THRESHOLD = 16 * 1024 * 1024
#: mode of every file holding patient data (archive, spool, series records, job files)
FILE_MODE = 0o640
#: mode of every directory holding patient data
DIR_MODE = 0o750
REPLACE_POLICIES = ("same-sender", "never", "any")


def private_umask() -> int:
    """Set the process umask to ``027`` (no access for others); returns the old one."""
    return os.umask(0o027)


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` with :data:`DIR_MODE`, and take the world's access from an existing one."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
        if mode & 0o007:
            os.chmod(path, mode & ~0o007)
    except OSError:
        pass


class SpoolBudget:
    """Bytes of received data sets held in memory by all associations together; a
    buffer that would exceed it spills to disk instead.  Thread-safe."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class SpoolBuffer(io.BytesIO):
    """Receive buffer: memory up to ``threshold`` bytes (and while the shared ``budget``
    allows), then a temporary file in ``spool_dir`` (mode :data:`FILE_MODE`).  A ``BytesIO``
    subclass because pynetdicom insists on one; only ``write``, ``getvalue``,
    ``seek``/``read``/``tell`` are meaningful."""

    def __init__(self, spool_dir: Path, threshold: int = DEFAULT_SPOOL_THRESHOLD, budget: SpoolBudget | None = None):
        super().__init__()
        self.spool_dir = spool_dir
        self.threshold = threshold
        self.budget = budget
        self._chunks: list[bytes] = []
        self._size = 0
        self._reserved = 0            # bytes taken from the budget
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        self._pos = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        n = len(data)
        if self._file is None and (self._size + n > self.threshold or
                                   (self.budget is not None and not self.budget.take(n))):
            self._spill()
        if self._file is not None:
            self._file.write(data)
        else:
            self._chunks.append(bytes(data))
            if self.budget is not None:
                self._reserved += n
        self._size += n
        return n

    def _spill(self) -> None:
        self.path = self.spool_dir / f"spool-{uuid.uuid4().hex}.part"
        self._file = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE), "w+b")
        for chunk in self._chunks:
            self._file.write(chunk)
        self._chunks = []
        self._release_budget()

    def _release_budget(self) -> None:
        if self.budget is not None and self._reserved:
            self.budget.give(self._reserved)
            self._reserved = 0

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
        self._release_budget()
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
    IDENTICAL = "identical"     # duplicate with an identical data set: nothing written
    REPLACED = "replaced"       # duplicate with a different data set: old version superseded
    REFUSED = "refused"         # a different data set the replace policy does not allow: nothing written


@dataclass(frozen=True)
class StoredInstance:
    path: Path
    outcome: StoreOutcome
    size: int


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


#: linkat errors that mean "never possible here" (no /proc, a file system without
#: O_TMPFILE links ...); any other error is the archive's (e.g. ENOSPC) and is raised
_CANNOT_LINK_ANONYMOUS = (errno.EPERM, errno.ENOENT, errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL)
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_libc: ctypes.CDLL | None = None


def _link_anonymous(fd: int, path: Path) -> None:
    """``linkat(AT_FDCWD, "/proc/self/fd/<fd>", AT_FDCWD, path, AT_SYMLINK_FOLLOW)``: give
    the ``O_TMPFILE`` file ``fd`` the name ``path`` (never replaces: FileExistsError if it
    exists).  The /proc form needs no privilege (``AT_EMPTY_PATH`` would need
    CAP_DAC_READ_SEARCH); ``os.link`` does not pass AT_SYMLINK_FOLLOW on every build, hence
    ctypes.  OSError (ENOENT without /proc ...) otherwise."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(path),
                    _AT_SYMLINK_FOLLOW) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


def read_stored_meta(fh: BinaryIO) -> tuple[int, str, str]:
    """(offset of the data set, transfer syntax UID, source AE title) of an archived
    file, from the File Meta Information this module wrote; raises ValueError otherwise."""
    head = fh.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("no File Meta Information")
    end = 144 + struct.unpack_from("<I", head, 140)[0]
    meta = fh.read(end - 144)
    pos, syntax, source = 0, "", ""
    while pos + 8 <= len(meta):
        group, element, vr = struct.unpack_from("<HH2s", meta, pos)
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            length, start = struct.unpack_from("<I", meta, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", meta, pos + 6)[0], pos + 8
        value = meta[start:start + length]
        if (group, element) == (0x0002, 0x0010):
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
        elif (group, element) == (0x0002, 0x0016):
            source = value.rstrip(b"\x00 ").decode("ascii", "replace")
        pos = start + length
    return end, syntax, source


def _same_data_set(fh: BinaryIO, offset: int, body: "SpoolBuffer | bytes") -> bool:
    """Whether the file's bytes from ``offset`` on are exactly ``body``."""
    size = body.size if isinstance(body, SpoolBuffer) else len(body)
    if os.fstat(fh.fileno()).st_size - offset != size:
        return False
    fh.seek(offset)
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


def _header_syntax(header: bytes) -> str:
    """The transfer syntax named in a File Meta header built by :func:`file_meta`."""
    try:
        return read_stored_meta(io.BytesIO(header))[1]
    except (ValueError, struct.error):
        return ""


class DicomArchive:
    """The archive (``layout.archive``, partial files in ``layout.tmp``).  Thread-safe."""

    def __init__(self, layout: DataLayout, fsync: bool = True, replace: str = "same-sender",
                 spool_memory: int | None = None):
        """``replace``: one of :data:`REPLACE_POLICIES`; ``spool_memory``: bytes all
        receive buffers may hold in memory together (None: no shared limit)."""
        if replace not in REPLACE_POLICIES:
            raise ValueError(f"replace policy must be one of {REPLACE_POLICIES}, not {replace!r}")
        self.layout = layout
        self.root = layout.archive
        self.tmp = layout.tmp
        self.fsync = fsync
        self.replace = replace
        self.spool_budget = SpoolBudget(spool_memory) if spool_memory is not None else None
        make_private_dir(self.root)
        make_private_dir(self.tmp)
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        self._locks = [threading.Lock() for _ in range(64)]
        self._lock_fd: int | None = None
        self._anonymous = hasattr(os, "O_TMPFILE")    # see _open_new

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
        return SpoolBuffer(self.tmp, threshold, self.spool_budget)

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
                    d.mkdir(mode=DIR_MODE, exist_ok=True)
                    if self.fsync:
                        fsync_dir(d.parent, strict=True)
            self._known_dirs.add(path)

    def store(self, study: str, series: str, sop: str, header: bytes, body: SpoolBuffer | bytes,
              sender: str = "") -> StoredInstance:
        """Durably archive one instance (UIDs must already be validated); ``sender`` is the
        calling AE title (for the replace policy)."""
        directory = self.series_dir(study, series)
        self._ensure_dir(directory)
        final = directory / f"{sop}.dcm"
        size = len(header) + (body.size if isinstance(body, SpoolBuffer) else len(body))
        fd, tmp = self._open_new(directory, sop)
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
            if tmp is None:                   # anonymous file: give it its name, or learn it exists
                try:
                    _link_anonymous(fd, final)
                except FileExistsError:
                    tmp = self._name_anonymous(fd, sop)
                except OSError as exc:
                    if exc.errno not in _CANNOT_LINK_ANONYMOUS:
                        raise
                    self._anonymous = False   # this filesystem or process cannot link it: named files
                    tmp = self._name_anonymous(fd, sop)
                else:
                    if self.fsync:
                        fsync_dir(directory, strict=True)
                    return StoredInstance(final, StoreOutcome.NEW, size)
        except BaseException:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise
        finally:
            os.close(fd)
        return self._place(tmp, final, directory, sop, header, body, sender, size)

    def _open_new(self, directory: Path, sop: str) -> tuple[int, Path | None]:
        """A file to write a new instance to: an anonymous one in its series directory
        (``O_TMPFILE``; named by :func:`_link_anonymous` once complete; a crash leaves
        nothing) where the filesystem allows, else ``tmp/<sop>.<random>.part``."""
        if self._anonymous:
            try:
                return os.open(directory, os.O_RDWR | os.O_TMPFILE, FILE_MODE), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):   # no O_TMPFILE here
                    raise
                self._anonymous = False
        tmp = self.tmp / f"{sop}.{uuid.uuid4().hex}.part"
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp

    def _name_anonymous(self, fd: int, sop: str) -> Path:
        """Give an anonymous file a ``tmp/*.part`` name (the rare duplicate path)."""
        tmp = self.tmp / f"{sop}.{uuid.uuid4().hex}.part"
        try:
            _link_anonymous(fd, tmp)
        except OSError:                       # cannot link at all: copy it
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                _copy_file(fd, out, os.fstat(fd).st_size)
                if self.fsync:
                    os.fsync(out)
            finally:
                os.close(out)
        return tmp

    def _place(self, tmp: Path, final: Path, directory: Path, sop: str, header: bytes, body: SpoolBuffer | bytes,
               sender: str, size: int) -> StoredInstance:
        """Move a complete, fsync'd ``tmp`` file to ``final``, applying the duplicate and
        replace rules under a lock that also holds against the node's other receiving
        processes (a POSIX record lock on ``tmp/archive.lock``)."""
        slot = zlib.crc32(final.name.encode()) % len(self._locks)   # the same in every process (hash() is not)
        with self._locks[slot], self._cross_process_lock(slot):
            outcome = StoreOutcome.NEW
            if final.exists():
                verdict = self._compare(final, header, body, sender)
                if verdict is not StoreOutcome.REPLACED:
                    os.unlink(tmp)
                    return StoredInstance(final, verdict, size)
                superseded = directory / ".superseded"
                superseded.mkdir(mode=DIR_MODE, exist_ok=True)
                os.link(final, superseded / f"{sop}.{time.time_ns()}.dcm")
                if self.fsync:
                    fsync_dir(superseded, strict=True)
                outcome = StoreOutcome.REPLACED
            os.rename(tmp, final)
            if self.fsync:
                fsync_dir(directory, strict=True)
        return StoredInstance(final, outcome, size)

    @contextlib.contextmanager
    def _cross_process_lock(self, slot: int) -> Iterator[None]:
        with self._dir_lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.tmp / "archive.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX, 1, slot)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, slot)

    def _compare(self, final: Path, header: bytes, body: SpoolBuffer | bytes, sender: str) -> StoreOutcome:
        """IDENTICAL (same data set in the same transfer syntax), REPLACED (different and
        the policy allows it) or REFUSED."""
        try:
            with open(final, "rb") as fh:
                offset, syntax, source = read_stored_meta(fh)
                if syntax == _header_syntax(header) and _same_data_set(fh, offset, body):
                    return StoreOutcome.IDENTICAL
        except (OSError, ValueError, struct.error):
            source = ""          # unreadable: never identical; the policy decides
        if self.replace == "any" or (self.replace == "same-sender" and source and source == sender.strip()[:16]):
            return StoreOutcome.REPLACED
        return StoreOutcome.REFUSED

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
