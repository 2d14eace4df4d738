"""Parse MGH *Stability* sequence reports.

A report is a small text file the Siemens Stability sequence writes after a phantom
scan.  Format (tab separated, slice numbers right-aligned, LF or CRLF)::

    Stability configuration: 16 slices, 500 measurements, 32 channels

    Stability SI results:

    slice#  min     max     mean    sd      sd[%]   P2P[%]
     1      426.39  427.86  427.16  0.262   0.061   0.344
    ...                                      (one row per slice)

followed by the sections ``SIfit``, ``SNR`` and ``ghost`` with the same columns and
``fit`` with the columns ``p[0] p[1] p[2] chisq``.  The scan time is not in the file;
it is the file name: ``Stability_20180910T090910.txt`` or, since XA30,
``Stability_2024-04-01T09-10-11.txt`` (local wall-clock time of the scanner).

:func:`parse_report` turns the bytes into a :class:`StabilityReport` or raises
:class:`ReportParseError`, which always names the file, the line (1-based; ``None``
for problems with the file name) and what was expected there.  It never raises
anything else for bad input.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "SECTION_NAMES",
    "SECTION_COLUMNS",
    "ReportParseError",
    "SectionTable",
    "StabilityReport",
    "parse_report",
    "read_report",
    "scan_time_from_name",
    "is_report_name",
]

#: Sections in the order they appear in every report.
SECTION_NAMES: tuple[str, ...] = ("SI", "SIfit", "SNR", "ghost", "fit")

_STAT_COLUMNS = ("min", "max", "mean", "sd", "sd[%]", "P2P[%]")
#: Column headers (as written in the report, without the leading ``slice#``).
SECTION_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "SI": _STAT_COLUMNS,
    "SIfit": _STAT_COLUMNS,
    "SNR": _STAT_COLUMNS,
    "ghost": _STAT_COLUMNS,
    "fit": ("p[0]", "p[1]", "p[2]", "chisq"),
}

# A decimal number as the sequence prints it (``427.16``, ``+0.000004``, ``-0.001666``);
# exponent notation is accepted too.  The capture group drops a leading ``+`` so the
# text can be sent to Graphite verbatim, keeping every printed digit.
_NUMBER = r"\+?(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_NUMBER_RE = re.compile(_NUMBER)
_ROW_RE = {
    name: re.compile(r"[ \t]*(\d+)" + "".join(r"[ \t]+" + _NUMBER for _ in cols) + r"[ \t]*")
    for name, cols in SECTION_COLUMNS.items()
}
_CONFIG_RE = re.compile(
    r"Stability configuration:[ \t]*(\d+)[ \t]+slices?[ \t]*,[ \t]*(\d+)[ \t]+measurements?"
    r"[ \t]*,[ \t]*(\d+)[ \t]+channels?[ \t]*"
)
_CONFIG_EXPECTED = "'Stability configuration: <S> slices, <M> measurements, <C> channels'"

_NAME_RE = re.compile(
    r"Stability_(?:(?P<compact>\d{8}T\d{6})|(?P<xa30>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}))"
    r"(?:~(?P<copy>\d+))?\.txt",
    re.IGNORECASE,
)
_NAME_EXPECTED = "a name like Stability_20180910T090910.txt or Stability_2024-04-01T09-10-11.txt"

#: Largest slice/measurement/channel count accepted (guards against absurd headers).
MAX_COUNT = 100_000


class ReportParseError(ValueError):
    """A stability report that does not follow the format.

    Attributes: ``source`` (file path or name), ``line`` (1-based line number, or
    ``None`` when the file name itself is wrong), ``expected`` and ``found``.
    ``str()`` gives ``<source>:<line>: expected <expected>, found <found>``.
    """

    def __init__(self, source: str, line: int | None, expected: str, found: str):
        self.source = source
        self.line = line
        self.expected = expected
        self.found = found
        where = f"{source}:{line}" if line is not None else f"{source} (file name)"
        super().__init__(f"{where}: expected {expected}, found {found}")


@dataclass(frozen=True)
class SectionTable:
    """One ``Stability <name> results:`` table.

    ``values[i][j]`` is the number in row ``i`` (slice ``i + 1``) and column
    ``columns[j]``; ``texts[i][j]`` is the same number exactly as printed (without a
    leading ``+``), used to send full precision.
    """

    name: str
    columns: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    texts: tuple[tuple[str, ...], ...]

    def column(self, column: str) -> tuple[float, ...]:
        """All slices' values of one column (by its header name, e.g. ``"sd[%]"``)."""
        j = self.columns.index(column)
        return tuple(row[j] for row in self.values)


@dataclass(frozen=True)
class StabilityReport:
    """A parsed report.  ``scan_time`` is the naive local wall-clock time of the scan
    taken from the file name; time zones are applied later (see :mod:`.metrics`)."""

    source: str
    scan_time: _dt.datetime
    slices: int
    measurements: int
    channels: int
    sections: Mapping[str, SectionTable]

    def section(self, name: str) -> SectionTable:
        return self.sections[name]


def is_report_name(name: str) -> bool:
    """True for any file name the ingester should look at (``Stability_*.txt``)."""
    lower = name.lower()
    return lower.startswith("stability_") and lower.endswith(".txt")


def scan_time_from_name(path: str) -> _dt.datetime:
    """The scan time encoded in a report's file name (naive local time).

    Accepts ``Stability_YYYYMMDDTHHMMSS.txt`` and ``Stability_YYYY-MM-DDTHH-MM-SS.txt``,
    optionally with a ``~N`` copy number before ``.txt`` (how the archive keeps two
    different reports of the same name).  Raises :class:`ReportParseError` otherwise.
    """
    name = os.path.basename(path)
    m = _NAME_RE.fullmatch(name)
    if not m:
        raise ReportParseError(path, None, _NAME_EXPECTED, repr(name))
    try:
        if m.group("compact"):
            return _dt.datetime.strptime(m.group("compact"), "%Y%m%dT%H%M%S")
        return _dt.datetime.strptime(m.group("xa30"), "%Y-%m-%dT%H-%M-%S")
    except ValueError as exc:
        raise ReportParseError(path, None, "a valid calendar date and time in " + _NAME_EXPECTED,
                               f"{name!r} ({exc})") from None


def _show(line: str) -> str:
    """A bounded, printable rendering of an offending line for error messages."""
    if line == "":
        return "an empty line"
    text = line if len(line) <= 120 else line[:117] + "..."
    return repr(text)


def read_report(path: str | os.PathLike[str]) -> StabilityReport:
    """Read and parse a report file.  ``OSError`` propagates; bad content raises
    :class:`ReportParseError`."""
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_report(data, os.fspath(path))


def parse_report(data: bytes | str, source: str) -> StabilityReport:
    """Parse a report's content; ``source`` is its path (the file name carries the scan
    time and is used in error messages)."""
    scan_time = scan_time_from_name(source)
    if isinstance(data, bytes):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as exc:
            line_no = data.count(b"\n", 0, exc.start) + 1
            raise ReportParseError(source, line_no, "plain ASCII text",
                                   f"byte 0x{data[exc.start]:02x}") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    # A complete report ends with a line break after the last row; without it the file
    # is (probably) still being written and its last number may be cut short.
    ends_with_newline = len(lines) > 1 and lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    return _Parser(source, lines, ends_with_newline).parse(scan_time)


class _Parser:
    """Line cursor over a report.  ``self.i`` is the 0-based index of the next line."""

    def __init__(self, source: str, lines: list[str], ends_with_newline: bool):
        self.source = source
        self.lines = lines
        self.ends_with_newline = ends_with_newline
        self.i = 0

    def error(self, index: int, expected: str, found: str | None = None) -> ReportParseError:
        line = index + 1
        if index >= len(self.lines):
            found = "the end of the file" if found is None else found
            # after a final line break the end is on the (empty) next line; without
            # one it is on the last line, never past it
            line = len(self.lines) + (1 if self.ends_with_newline else 0)
        elif found is None:
            found = _show(self.lines[index])
        return ReportParseError(self.source, max(1, line), expected, found)

    def skip_blank(self) -> None:
        lines = self.lines
        while self.i < len(lines) and not lines[self.i].strip():
            self.i += 1

    def parse(self, scan_time: _dt.datetime) -> StabilityReport:
        if not self.lines or (len(self.lines) == 1 and self.lines[0] == ""):
            raise self.error(0, _CONFIG_EXPECTED, "an empty file")
        m = _CONFIG_RE.fullmatch(self.lines[0].strip())
        if not m:
            raise self.error(0, _CONFIG_EXPECTED)
        slices, measurements, channels = (int(g) for g in m.groups())
        for label, count in (("slices", slices), ("measurements", measurements), ("channels", channels)):
            if not 1 <= count <= MAX_COUNT:
                raise self.error(0, f"a number of {label} between 1 and {MAX_COUNT}", str(count))
        self.i = 1
        sections = {}
        for name in SECTION_NAMES:
            sections[name] = self.parse_section(name, slices)
        last_row = self.i - 1
        self.skip_blank()
        if self.i < len(self.lines):
            raise self.error(self.i, "only blank lines after the last row of the fit section")
        if last_row == len(self.lines) - 1 and not self.ends_with_newline:
            raise self.error(last_row, "a line break after the last row (the file looks cut off "
                             "or still being written)", "none")
        return StabilityReport(self.source, scan_time, slices, measurements, channels, sections)

    def parse_section(self, name: str, slices: int) -> SectionTable:
        lines = self.lines
        title = f"Stability {name} results:"
        self.skip_blank()
        if self.i >= len(lines) or lines[self.i].strip() != title:
            raise self.error(self.i, repr(title))
        self.i += 1
        self.skip_blank()
        columns = SECTION_COLUMNS[name]
        header = ("slice#",) + columns
        if self.i >= len(lines) or tuple(lines[self.i].split()) != header:
            raise self.error(self.i, "the header row " + repr("\t".join(header)))
        self.i += 1
        row_re = _ROW_RE[name]
        values = []
        texts = []
        for slice_no in range(1, slices + 1):
            if self.i >= len(lines):
                raise self.error(self.i, f"row {slice_no} of {slices} of the {name} section")
            line = lines[self.i]
            m = row_re.fullmatch(line)
            if m is None or int(m.group(1)) != slice_no:
                raise self.row_error(name, line, slice_no, slices, columns)
            row_texts = m.groups()[1:]
            row_values = tuple(map(float, row_texts))
            if _INF in row_values or _NINF in row_values:  # e.g. 1e999
                raise self.error(self.i, f"finite numbers in {name} row {slice_no}", _show(line))
            values.append(row_values)
            texts.append(row_texts)
            self.i += 1
        if self.i < len(lines) and lines[self.i].strip() and not lines[self.i].lstrip().startswith("Stability"):
            raise self.error(self.i, f"a blank line after the {slices} rows of the {name} section "
                             f"(the configuration says {slices} slices)")
        return SectionTable(name, columns, tuple(values), tuple(texts))

    def row_error(self, name: str, line: str, slice_no: int, slices: int,
                  columns: tuple[str, ...]) -> ReportParseError:
        """Explain precisely why ``line`` is not row ``slice_no`` of section ``name``."""
        where = f"row {slice_no} of {slices} of the {name} section"
        tokens = line.split()
        if not tokens:
            return self.error(self.i, where)
        if tokens[0].startswith("Stability") or tokens[0] == "slice#":
            return self.error(self.i, where + f" (the configuration says {slices} slices)")
        if tokens[0] != str(slice_no) and not (tokens[0].isdigit() and int(tokens[0]) == slice_no):
            return self.error(self.i, f"slice number {slice_no} at the start of {where}", repr(tokens[0]))
        if len(tokens) != len(columns) + 1:
            return self.error(self.i, f"{len(columns) + 1} tab-separated fields (slice# "
                              + " ".join(columns) + f") in {where}", f"{len(tokens)} fields: {_show(line)}")
        for column, token in zip(columns, tokens[1:]):
            if not _NUMBER_RE.fullmatch(token):
                return self.error(self.i, f"a decimal number in column {column!r} of {where}", repr(token))
        return self.error(self.i, where)


_INF = float("inf")
_NINF = float("-inf")
