"""Read-back check: are datapoints really in carbon's whisper files?

Carbon's line receiver "confirms" a batch when it has read it, not when it has written
it: a carbon-cache killed in between loses what it held in memory.  Where carbon runs on
the same host, a sender can close that gap by reading the datapoints back from whisper
before it treats them as delivered (``verify_whisper_dir`` in the stability ingester's
and in the node's ``[measures]`` settings).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable

from .errors import ConfigError

__all__ = ["check_whisper_dir", "missing_from_whisper", "whisper_file"]


def check_whisper_dir(directory: str | Path, key: str) -> Path:
    """At start-up: ``directory`` must be an absolute, existing directory and the
    ``whisper`` module importable, else every datapoint would count as missing and be
    sent again forever; :class:`ConfigError` naming ``key``."""
    path = Path(directory)
    if not path.is_absolute():
        raise ConfigError(key, f"must be an absolute path (carbon's whisper directory), found {str(directory)!r}")
    if not path.is_dir():
        raise ConfigError(key, f"{path} is not a directory (carbon's LOCAL_DATA_DIR/whisper)")
    try:
        import whisper  # noqa: F401
    except ImportError:
        raise ConfigError(key, "needs the 'whisper' Python module to read carbon's files") from None
    return path


def whisper_file(whisper_dir: Path, metric: str) -> Path:
    """Carbon's file for a dotted metric path: ``<dir>/a/b/c.wsp``."""
    return Path(whisper_dir, *metric.split(".")).with_suffix(".wsp")


def missing_from_whisper(whisper_dir: Path, points: Iterable[tuple[str, float, int]], timeout: float,
                         poll: float = 0.1) -> list[str]:
    """The metric paths of ``points`` (path, value, epoch seconds) whose value is not (yet)
    in the whisper files under ``whisper_dir`` at its time, polling for up to ``timeout``
    seconds; empty when every point is there.  A file carbon is still creating counts as
    missing.  Needs the ``whisper`` module."""
    from ..localgraphite import whisper_value_at

    pending: dict[tuple[str, int], float] = {(path, int(ts)): float(value) for path, value, ts in points}
    deadline = time.monotonic() + timeout
    while True:
        for (path, ts), want in list(pending.items()):
            wsp = whisper_file(whisper_dir, path)
            try:
                got = whisper_value_at(wsp, ts) if wsp.exists() else None
            except Exception:            # carbon is creating the file right now
                got = None
            if got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                del pending[(path, ts)]
        if not pending or time.monotonic() >= deadline:
            return sorted({path for path, _ts in pending})
        time.sleep(poll)
