"""Coverage-guided fuzzing of the stability report parser with atheris (libFuzzer).

Each input is parsed as a report under both file-name forms, and short inputs are also
tried as a file name.  The property: an input either parses — and then yields finite
Graphite values under ``hops.stability.fuzz.`` — or raises :class:`ReportParseError`
naming the source and a line inside the input (``None`` only for a bad file name).  Any
other exception is a crash; an input that runs longer than libFuzzer's ``-timeout`` is a
hang.  Both are written to ``-artifact_prefix`` by libFuzzer.

Usage (what ``tests/test_hostile_fuzz.py`` runs)::

    python tests/tools/fuzz_stability_report.py CORPUS_DIR SEED_DIR... \\
        -max_total_time=60 -timeout=10 -artifact_prefix=CRASH_DIR/ -dict=tests/data/fuzz/stability_report.dict

or ``python tests/tools/fuzz_stability_report.py --replay FILE...`` to check saved inputs
without libFuzzer (exit 1 and the traceback for the first one that breaks the property).
"""
from __future__ import annotations

import math
import sys

import atheris

with atheris.instrument_imports(include=["stability_collector"]):
    from stability_collector.metrics import MetricLayout, report_metrics
    from stability_collector.report import ReportParseError, parse_report, scan_time_from_name

NAMES = ("/fuzz/Stability_20180910T090910.txt", "/fuzz/Stability_2024-04-01T09-10-11.txt")
LAYOUT = MetricLayout()


class PropertyViolation(AssertionError):
    """The parser answered an input in a way its documentation does not allow."""


def check_report(data: bytes, source: str) -> None:
    try:
        report = parse_report(data, source)
    except ReportParseError as exc:
        lines_in_input = data.count(b"\n") + 1
        if exc.source != source or not str(exc).startswith(source):
            raise PropertyViolation(f"error does not name its source: {exc!r}") from exc
        if exc.line is None or not 1 <= exc.line <= lines_in_input:
            raise PropertyViolation(f"line {exc.line} outside the input's {lines_in_input} lines: {exc}") from exc
        if "\n" in str(exc):
            raise PropertyViolation(f"multi-line error message: {str(exc)!r}") from exc
        return
    for line in report_metrics(report, "fuzz", LAYOUT).graphite_lines().splitlines():
        path, value, stamp = line.split(" ")
        if not path.startswith("hops.stability.fuzz.") or not math.isfinite(float(value)):
            raise PropertyViolation(f"bad Graphite line {line!r}")
        int(stamp)


def check_name(data: bytes) -> None:
    name = data.decode("latin-1")
    try:
        scan_time_from_name(name)
    except ReportParseError as exc:
        if exc.line is not None or exc.source != name:
            raise PropertyViolation(f"file-name error with a line or another source: {exc!r}") from exc


def test_one_input(data: bytes) -> None:
    for source in NAMES:
        check_report(data, source)
    if len(data) <= 64:
        check_name(data)


def replay(paths: list[str]) -> int:
    for path in paths:
        with open(path, "rb") as fh:
            test_one_input(fh.read())
    print(f"replayed {len(paths)} input(s): all within the property")
    return 0


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "--replay":
        sys.exit(replay(argv[2:]))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
