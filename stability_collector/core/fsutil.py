"""Durable file writes shared by both halves of HOPS.

:func:`atomic_write` replaces a file so that a reader sees the old or the new content,
never a mixture: the data goes to a temporary file in the same directory (created with
``mode``), which is renamed over the target.  With ``durable=True`` (the default) the
file is fsync'd before the rename and the directory after it, so the new content
survives a power loss once the call returns.  ``durable=False`` is for views that are
rewritten often and can be rebuilt (it still never exposes a partial file).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path: Path, strict: bool = False) -> None:
    """fsync a directory (makes renames and new names in it durable).  A filesystem that
    refuses fsync on directories (some network filesystems) is tolerated, unless
    ``strict``: then the OSError is raised (the caller must not report the data safe)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically; see the module
    docstring.  On failure the temporary file is removed and the old file is untouched."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)            # whatever the umask took away
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
