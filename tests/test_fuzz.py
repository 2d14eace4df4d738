"""Fuzz the parser with thousands of mutated reports: the only exception allowed is the
documented ReportParseError, and whatever parses yields valid Graphite lines."""
from __future__ import annotations

import math
import random

from conftest import reference_reports
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stability_collector.metrics import MetricLayout, report_metrics
from stability_collector.report import ReportParseError, parse_report
from stability_collector.samples import render_report

SEEDS = [p.read_bytes() for p in reference_reports()] + [
    render_report(1, 10, 8, 300.0, 100.0, -0.01, 2.0, random.Random(2)).encode(),
    render_report(3, 500, 64, 900.0, 300.0, -0.002, 3.0, random.Random(3)).encode(),
]
NAMES = ["Stability_20180910T090910.txt", "Stability_2024-04-01T09-10-11.txt"]
TOKENS = [b"\t", b" ", b"\n", b"\r\n", b"+", b"-", b".", b"e", b"E", b"nan", b"inf", b"1e999", b"0",
          b"99", b"slice#", b"Stability", b"Stability SI results:", b"\x00", b"\xff", b"\xc3\xa9",
          b"Stability configuration: 2 slices, 5 measurements, 1 channels", b"17", b"-0.000000", b"_1"]


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, a, b in ops:
        if not buf:
            buf.extend(TOKENS[a % len(TOKENS)])
            continue
        i = a % len(buf)
        if kind == 0:                                   # delete a span
            del buf[i:i + 1 + b % 40]
        elif kind == 1:                                 # insert a token
            buf[i:i] = TOKENS[b % len(TOKENS)]
        elif kind == 2:                                 # flip one byte
            buf[i] = b % 256
        elif kind == 3:                                 # truncate
            del buf[i:]
        elif kind == 4:                                 # drop / duplicate a whole line
            lines = bytes(buf).split(b"\n")
            j = a % len(lines)
            if b % 2:
                del lines[j]
            else:
                lines.insert(j, lines[j])
            buf = bytearray(b"\n".join(lines))
        elif kind == 5:                                 # swap two lines
            lines = bytes(buf).split(b"\n")
            j, k = a % len(lines), b % len(lines)
            lines[j], lines[k] = lines[k], lines[j]
            buf = bytearray(b"\n".join(lines))
        else:                                           # change a digit
            digits = [n for n, c in enumerate(buf) if 48 <= c <= 57]
            if digits:
                buf[digits[a % len(digits)]] = 48 + b % 10
    return bytes(buf)


def check(data: bytes, name: str) -> None:
    try:
        report = parse_report(data, f"/fuzz/{name}")
    except ReportParseError as exc:
        assert exc.source == f"/fuzz/{name}"
        assert exc.line is None or exc.line >= 1
        assert str(exc).startswith(f"/fuzz/{name}")
        return
    metrics = report_metrics(report, "fuzz", MetricLayout())
    for line in metrics.graphite_lines().splitlines():
        path, value, stamp = line.split(" ")
        assert path.startswith("hops.stability.fuzz.") and " " not in path
        assert math.isfinite(float(value))
        int(stamp)


ops = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=6)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.sampled_from(range(len(SEEDS))), name=st.sampled_from(NAMES), operations=ops)
def test_mutated_reports_only_raise_the_documented_error(seed, name, operations):
    check(mutate(SEEDS[seed], operations), name)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(data=st.binary(max_size=2000), name=st.sampled_from(NAMES + ["Stability_x.txt"]))
def test_arbitrary_bytes_only_raise_the_documented_error(data, name):
    check(data, name)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(text=st.text(max_size=500))
def test_arbitrary_text_after_a_valid_header(text):
    check(b"Stability configuration: 1 slices, 2 measurements, 3 channels\n" + text.encode("utf-8", "replace"),
          NAMES[0])


def test_random_mutation_campaign_parses_some_and_rejects_most():
    """A plain random campaign as well (independent of hypothesis' shrinking), checking that
    the mutations do exercise both outcomes."""
    rng = random.Random(7)
    parsed = rejected = 0
    for _ in range(3000):
        seed = SEEDS[rng.randrange(len(SEEDS))]
        operations = [(rng.randrange(7), rng.randrange(10**6), rng.randrange(10**6)) for _ in range(rng.randint(1, 3))]
        data = mutate(seed, operations)
        try:
            parse_report(data, "/fuzz/" + NAMES[0])
            parsed += 1
        except ReportParseError:
            rejected += 1
    assert parsed > 50 and rejected > 1000, (parsed, rejected)
