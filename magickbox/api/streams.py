"""Streamed responses: zip archives built while they are sent, and ``processing.log``
followed live as server-sent events.

**Zip.** Files are stored (no compression: DICOM and NIfTI outputs hardly compress, and
deflating gigabytes would cost a core) into a zip written to a sink that hands each
piece to the response as soon as it exists; memory stays at one read chunk (1 MiB) plus
the central directory, whatever the size of the files.  Zip64 is used where needed, so
files over 4 GiB work.

**Log events** (``text/event-stream``): ``event: log`` with one line of the log per
``data:`` field (the browser's EventSource joins them), ``event: status`` with the job's
status as JSON whenever it changes, a ``: keep-alive`` comment every 15 s, and
``event: end`` once the job is final and its log fully sent.  A retried job's new
attempt is announced with a ``--- attempt ... ---`` line.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import zipfile
from typing import AsyncIterator, Callable, Iterable, Iterator

from .store import FileEntry, NodeStore

__all__ = ["zip_stream", "log_events", "file_part", "CHUNK"]

CHUNK = 1 << 20
_ZIP64_ABOVE = (1 << 31) - 1


class _Sink:
    """A write-only, non-seekable file for :class:`zipfile.ZipFile` that keeps what was
    written until :meth:`take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def zip_stream(files: Iterable[FileEntry], root: str) -> Iterator[bytes]:
    """The bytes of a zip of ``files`` (names under ``root/``), produced piece by piece.
    A file that disappears while the zip is made is left out."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for entry in files:
            try:
                src = open(entry.path, "rb")
            except OSError:
                continue
            with src:
                st = os.fstat(src.fileno())
                info = zipfile.ZipInfo(f"{root}/{entry.arcname}",
                                       date_time=time.localtime(st.st_mtime)[:6] if st.st_mtime >= 315532800
                                       else (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=st.st_size > _ZIP64_ABOVE) as dst:
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        dst.write(chunk)
                        yield sink.take()
            yield sink.take()
    yield sink.take()


def file_part(path: str | os.PathLike[str], start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` of a file (one that may still grow), in chunks."""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            data = fh.read(min(CHUNK, left))
            if not data:
                return
            left -= len(data)
            yield data


def _sse(event: str, lines: Iterable[str]) -> str:
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


async def log_events(store: NodeStore, job_id: int, closing: Callable[[], bool], poll: float = 0.3,
                     backlog: int = 256 * 1024, keepalive: float = 15.0) -> AsyncIterator[str]:
    """Server-sent events following the job's ``processing.log`` until the job is final
    (first the last ``backlog`` bytes of what is there already)."""
    fh = None
    identity: tuple[int, int] | None = None
    partial = b""
    last_status: tuple[str, str] | None = None
    last_sent = time.monotonic()
    try:
        while not closing():
            job = store.job(job_id)
            if job is None:
                yield _sse("end", ["the job was removed"])
                return
            path = store.log_path(job_id)
            if path is not None:
                try:
                    st = os.stat(path)
                    current = (st.st_dev, st.st_ino)
                except OSError:
                    current = None
                if current is not None and current != identity:
                    if fh is not None:               # a new attempt: finish the old file first
                        rest = fh.read()
                        fh.close()
                        lines = (partial + rest).decode("utf-8", "replace").splitlines()
                        partial = b""
                        if lines:
                            yield _sse("log", lines)
                        yield _sse("log", [f"--- attempt {path.parent.name} ---"])
                    try:
                        fh = open(path, "rb")
                        identity = current
                        if identity is not None and st.st_size > backlog and last_status is None:
                            fh.seek(st.st_size - backlog)
                            fh.readline()            # start at a line boundary
                            yield _sse("log", [f"... (the first {st.st_size - backlog} bytes are left out)"])
                    except OSError:
                        fh, identity = None, None
            data = fh.read(CHUNK) if fh is not None else b""
            if data:
                data = partial + data
                cut = data.rfind(b"\n") + 1
                partial = data[cut:]
                lines = data[:cut].decode("utf-8", "replace").splitlines()
                if lines:
                    yield _sse("log", lines)
                    last_sent = time.monotonic()
                if len(data) - cut >= CHUNK:         # a huge line without line break
                    yield _sse("log", [partial.decode("utf-8", "replace")])
                    partial = b""
                continue
            status = (job.status, job.message)
            if status != last_status:
                last_status = status
                yield _sse("status", [json.dumps({"status": job.status, "message": job.message,
                                                  "finished": job.finished})])
                last_sent = time.monotonic()
            if job.is_final and (fh is not None or path is None):
                if partial:
                    yield _sse("log", [partial.decode("utf-8", "replace")])
                yield _sse("end", [job.status])
                return
            if time.monotonic() - last_sent > keepalive:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(poll)
    finally:
        if fh is not None:
            fh.close()
