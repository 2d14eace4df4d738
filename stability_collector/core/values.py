"""Parsing of configuration and command-line values both halves share; every error is a
:class:`~.errors.ConfigError` naming the key."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from .errors import ConfigError

__all__ = ["parse_bool", "parse_date"]

_TRUE = {"1", "true", "yes", "y", "on", "t"}
_FALSE = {"0", "false", "no", "n", "off", "f"}


def parse_bool(key: str, value: Any, strict: bool = False) -> bool:
    """A boolean: ``True``/``False``; unless ``strict`` also 0/1 and the words
    true/false, yes/no, on/off, t/f (any case, as written in INI-style, JSON and
    MagickBox files).  ``strict`` (TOML/YAML, which have real booleans) accepts only those."""
    if isinstance(value, bool):
        return value
    if not strict:
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    raise ConfigError(key, f"expected true or false, found {value!r}")


def parse_date(key: str, text: str) -> _dt.datetime:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (no zone: wall-clock time of whoever
    reads it); a date alone is its midnight."""
    try:
        return _dt.datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ConfigError(key, f"expected a date like 2018-01-31 or 2018-01-31T08:00, found {text!r}") from None
