"""Log records that a peer cannot forge: one line per event, control characters escaped.

Text from the network (AE titles, exception messages about malformed PDUs) can carry
newlines, ANSI escape sequences or Unicode line separators.  :func:`printable` escapes
every such character (``\\n``, ``\\x1b``, ``\\u2028``), and :class:`OneLineFormatter`
applies it to every record and renders an exception as one bracketed summary on the same
line (type, message and the innermost frames) instead of a multi-line traceback.
:func:`configure` installs it for the ``magickbox`` commands.
"""
from __future__ import annotations

import logging
import os
import traceback
import unicodedata

__all__ = ["printable", "OneLineFormatter", "configure", "FORMAT"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: frames of a traceback kept in the one-line summary (innermost last)
TRACE_FRAMES = 4


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every control, format and line/paragraph separator character
    escaped (categories Cc, Cf, Zl, Zp); everything else unchanged."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in s)


class OneLineFormatter(logging.Formatter):
    """Formats a record as exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = printable(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and record.exc_info[1] is not None:
            line += " " + self.summarise(record.exc_info[1])
        elif record.exc_text:
            line += " " + printable(record.exc_text)
        if record.stack_info:
            line += " [stack: " + printable(record.stack_info.splitlines()[-1]) + "]"
        return line

    @staticmethod
    def summarise(exc: BaseException) -> str:
        """``[ValueError: message at file.py:12 func < file.py:40 caller]``."""
        text = printable("".join(traceback.format_exception_only(type(exc), exc)).strip())
        frames = traceback.extract_tb(exc.__traceback__)[-TRACE_FRAMES:]
        where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
        return f"[{text}{' at ' + where if where else ''}]"


def configure(level: int) -> None:
    """Root logging for a ``magickbox`` command: stderr, one sanitised line per record."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
