"""DICOM UID validation (PS3.5 §9.1) before a UID is used as a file or directory name.

A UID is at most 64 characters of digits and dots; components are non-empty and have
no leading zero (except the component ``0`` itself).  Nothing that fails this check is
ever joined into a path: ``../``, ``/``, empty and over-long values are refused.

Some legacy equipment writes components with leading zeros (``1.2.840.0968``).  With
``lenient=True`` those are accepted (still only digits and dots, no empty component, at
most 64 characters, so still path-safe).
"""
from __future__ import annotations

import re

__all__ = ["UIDError", "check_uid", "is_valid_uid"]

_STRICT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_LENIENT = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_LENGTH = 64


class UIDError(ValueError):
    """A value that is not a valid DICOM UID."""


def is_valid_uid(value: object, lenient: bool = False) -> bool:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LENGTH:
        return False
    return (_LENIENT if lenient else _STRICT).fullmatch(value) is not None


def check_uid(value: object, what: str, lenient: bool = False) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`UIDError` naming ``what``
    (the message shows at most 80 characters of the offending value, escaped)."""
    if is_valid_uid(value, lenient):
        return value  # type: ignore[return-value]
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if isinstance(value, str) and len(value) > MAX_LENGTH:
        reason = f"longer than {MAX_LENGTH} characters"
    elif not value:
        reason = "empty"
    else:
        reason = "not digits and dots in DICOM UID form"
    raise UIDError(f"{what} {shown} is not a valid UID ({reason})")
