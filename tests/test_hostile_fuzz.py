"""Coverage-guided fuzzing of the stability report parser (atheris, i.e. libFuzzer).

``tests/tools/fuzz_stability_report.py`` is the harness: every input must either parse
(into finite Graphite values) or raise the documented :class:`ReportParseError` naming
the file and a line inside it; any other exception is a crash and an input running
longer than 10 s a hang.  The default run fuzzes for 30 s; ``HOPS_FUZZ_SECONDS=3600``
runs longer, ``HOPS_FUZZ_CORPUS=DIR`` keeps the grown corpus between runs.  Crashing
inputs are saved in ``HOPS_FUZZ_ARTIFACTS`` (default ``.fuzz-artifacts/`` in the
repository); to keep one as a regression, copy it into
``tests/data/fuzz/stability_report_regressions/`` (replayed by every run)."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REFERENCE, REPO, reference_reports

from stability_collector.report import ReportParseError, parse_report
from stability_collector.samples import render_report

HARNESS = REPO / "tests" / "tools" / "fuzz_stability_report.py"
DICTIONARY = REPO / "tests" / "data" / "fuzz" / "stability_report.dict"
REGRESSIONS = REPO / "tests" / "data" / "fuzz" / "stability_report_regressions"
FUZZ_SECONDS = int(os.environ.get("HOPS_FUZZ_SECONDS", "30"))
ARTIFACTS = Path(os.environ.get("HOPS_FUZZ_ARTIFACTS", REPO / ".fuzz-artifacts")) / "stability_report"


def test_saved_fuzz_inputs_stay_within_the_property():
    """Inputs the fuzzer once broke the parser with (fixed since) are replayed every run."""
    saved = sorted(REGRESSIONS.iterdir())
    assert saved, REGRESSIONS
    run = subprocess.run([sys.executable, str(HARNESS), "--replay", *map(str, saved)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_end_of_file_error_points_at_a_line_of_the_file():
    """Found by the fuzzer: a report cut off after a complete row but before its line break
    was reported at a line past the end of the file (line 8 of a 7-line file)."""
    text = reference_reports()[1].read_text().replace("\r\n", "\n")
    cut = "\n".join(text.split("\n")[:7])                 # header, SI title, columns, rows 1-2
    with pytest.raises(ReportParseError) as err:
        parse_report(cut.encode(), "Stability_20180910T090910.txt")
    assert err.value.line == 7 and err.value.found == "the end of the file", err.value
    with pytest.raises(ReportParseError) as err:          # with the line break: the next line
        parse_report((cut + "\n").encode(), "Stability_20180910T090910.txt")
    assert err.value.line == 8 and err.value.found == "the end of the file", err.value


@pytest.mark.timeout(FUZZ_SECONDS + 600)
def test_coverage_guided_fuzzing_of_the_report_parser(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for n, (slices, measurements, channels) in enumerate([(1, 10, 8), (3, 500, 64), (16, 200, 20)]):
        report = render_report(slices, measurements, channels, 300.0, 100.0, -0.01, 2.0, random.Random(n))
        (seeds / f"synthetic-{n}.txt").write_text(report)
        (seeds / f"synthetic-crlf-{n}.txt").write_bytes(report.replace("\n", "\r\n").encode())
    corpus = Path(os.environ.get("HOPS_FUZZ_CORPUS", tmp_path / "corpus"))
    corpus.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = set(ARTIFACTS.iterdir())
    run = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), str(REFERENCE), str(REGRESSIONS), str(seeds),
         f"-max_total_time={FUZZ_SECONDS}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=16384",
         f"-dict={DICTIONARY}", f"-artifact_prefix={ARTIFACTS}/", "-print_final_stats=1"],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 300, cwd=tmp_path)
    output = run.stderr + run.stdout
    new = sorted(set(ARTIFACTS.iterdir()) - before)
    assert run.returncode == 0 and not new, (f"the fuzzer broke the parser; inputs saved: {[str(p) for p in new]}\n"
                                             + output[-6000:])
    inited = re.search(r"INITED cov: (\d+)", output)
    done = re.search(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", output)
    assert inited and done, output[-3000:]
    runs, coverage = int(done.group(1)), int(done.group(2))
    print(f"\natheris: {runs} inputs in {FUZZ_SECONDS} s, coverage {inited.group(1)} -> {coverage} edges, "
          f"corpus {done.group(4)} inputs")
    assert "Instrumenting stability_collector.report" in output        # coverage-guided, not blind
    assert runs > 20 * FUZZ_SECONDS and coverage > 100, done.group(0)
