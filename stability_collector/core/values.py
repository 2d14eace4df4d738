"""Parsing of configuration and command-line values both halves share; every error is a
:class:`~.errors.ConfigError` naming the key."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from .errors import ConfigError

__all__ = ["parse_bool", "parse_date", "parse_number", "parse_string"]

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


def parse_number(key: str, value: Any, minimum: float = 0.0, text: bool = True) -> float:
    """A number >= ``minimum``; unless ``text`` is False also its text ("2.5", as flags
    and INI-style files give it).  Booleans are never numbers."""
    number: float | None = None
    if not isinstance(value, bool):
        if isinstance(value, (int, float)):
            number = float(value)
        elif text:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
    if number is None or not number >= minimum:
        raise ConfigError(key, f"expected a number >= {minimum:g}, found {value!r}")
    return number


def parse_string(key: str, value: Any) -> str:
    """A string (TOML/JSON give other types as they are written)."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, found {value!r}")
    return value


def parse_date(key: str, text: str) -> _dt.datetime:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (no zone: wall-clock time of whoever
    reads it); a date alone is its midnight."""
    try:
        return _dt.datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ConfigError(key, f"expected a date like 2018-01-31 or 2018-01-31T08:00, found {text!r}") from None
