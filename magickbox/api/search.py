"""Search patterns of the job list (``mb list REGEX``, ``?q=``).

Patterns are compiled with RE2 (``google-re2``), which matches in time linear in the
text: no pattern can make the node backtrack for ever (Python's ``re`` takes hours on
``(a+)+$`` against ``aaaa…b``).  RE2's syntax is Python's without back-references and
look-around.  Matching is case-insensitive and never crosses a line, and ``^``/``$``
anchor at a line's start and end: the store searches one line of text per job (see :data:`magickbox.api.store.SEARCHED_FIELDS`).
"""
from __future__ import annotations

from typing import Iterator, Protocol

import re2

__all__ = ["compile_search", "SearchPattern", "SearchPatternError", "MAX_LENGTH"]

MAX_LENGTH = 200


class SearchPatternError(ValueError):
    """A search pattern that is not a valid regular expression (RE2 syntax)."""


class SearchPattern(Protocol):
    pattern: str

    def finditer(self, text: str) -> Iterator[object]: ...


def compile_search(pattern: str) -> SearchPattern:
    """Compile a search pattern or raise :class:`SearchPatternError` with RE2's reason."""
    if len(pattern) > MAX_LENGTH:
        raise SearchPatternError(f"the search pattern is longer than {MAX_LENGTH} characters")
    if "\x00" in pattern:
        raise SearchPatternError("NUL in the search pattern")
    options = re2.Options()
    options.case_sensitive = False
    options.never_nl = True               # a match never spans two jobs' lines
    options.log_errors = False
    options.max_mem = 8 << 20
    try:
        return re2.compile("(?m)" + pattern, options)     # ^ and $: start and end of a job's line
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise SearchPatternError(f"not a valid regular expression: {reason}") from None
    except (TypeError, ValueError, UnicodeError) as exc:
        raise SearchPatternError(f"not a valid regular expression: {exc}") from None
