"""Move reports into the ``ingested/`` archive or the ``failed/`` quarantine.

Moves never overwrite and are atomic on one filesystem: the file is hard-linked under
its new name (``link`` fails if the name exists) and only then unlinked from the scanner
directory, and both directories are fsync'd.  A crash between the two steps leaves the
report in both places; the next pass re-delivers it (idempotent: same paths, values and
timestamps) and then finds the identical archived copy and just removes the original.
A *different* file of the same name is archived as ``Stability_<time>~1.txt``, ``~2``...

Filesystems without hard links (some SMB shares) fall back to an existence check
followed by ``rename`` (the tiny window between the two is documented, not hidden).
"""
from __future__ import annotations

import datetime as _dt
import errno
import filecmp
import os
from pathlib import Path

from .core.fsutil import atomic_write, fsync_dir

__all__ = ["move_without_overwrite", "quarantine", "ArchiveError"]

_NO_LINK_ERRNOS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


class ArchiveError(OSError):
    """A report could not be moved; it stays where it is."""


def _candidates(name: str):
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    yield name
    for n in range(1, 10_000):
        yield f"{stem}~{n}.{ext}" if ext else f"{stem}~{n}"


def move_without_overwrite(src: Path, dest_dir: Path) -> Path:
    """Move ``src`` into ``dest_dir`` (created if needed) and return its new path.

    An identical file already archived under the name counts as done (``src`` is
    removed).  Raises :class:`ArchiveError` if the move is impossible.
    """
    src = Path(src)
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(exist_ok=True)
        for name in _candidates(src.name):
            target = dest_dir / name
            try:
                os.link(src, target)
            except FileExistsError:
                if filecmp.cmp(src, target, shallow=False):
                    os.unlink(src)
                    fsync_dir(src.parent)
                    return target
                continue
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                if target.exists():
                    if filecmp.cmp(src, target, shallow=False):
                        os.unlink(src)
                        fsync_dir(src.parent)
                        return target
                    continue
                os.rename(src, target)
                fsync_dir(dest_dir)
                fsync_dir(src.parent)
                return target
            fsync_dir(dest_dir)
            os.unlink(src)
            fsync_dir(src.parent)
            return target
    except OSError as exc:
        raise ArchiveError(exc.errno, f"cannot move {src} into {dest_dir}: {exc.strerror or exc}") from None
    raise ArchiveError(errno.EEXIST, f"cannot move {src} into {dest_dir}: too many copies of {src.name}")


def quarantine(src: Path, failed_dir: Path, reason: str) -> Path:
    """Move a bad report into ``failed_dir`` and write ``<name>.error`` beside it with
    ``reason``.  Returns the report's new path."""
    target = move_without_overwrite(src, failed_dir)
    when = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        atomic_write(target.with_name(target.name + ".error"),
                     f"{reason}\n\nquarantined {when} from {src}\n"
                     "Fix the file (or the configuration) and move it back to be ingested again.\n")
    except OSError as exc:
        raise ArchiveError(exc.errno, f"moved {src} to {target} but could not write its .error file: {exc}") from None
    return target
