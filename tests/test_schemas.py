"""Carbon's storage schema for the metric names: the shipped one covers the upstream names
Diamond produces, a generated section covers any other layout, and a configured
storage-schemas.conf that would lose data stops the start (real carbon-cache)."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for_values

from stability_collector.core.errors import ConfigError
from stability_collector.core.graphite import GraphiteAddress, GraphiteSender
from stability_collector.ingest import Ingestor, IngestSettings, Outcome, ScannerSource
from stability_collector.localgraphite import LocalGraphite, graphite_conf_text
from stability_collector.metrics import MetricLayout, report_metrics, resolve_timezone
from stability_collector.report import read_report
from stability_collector.samples import render_report
from stability_collector.schemas import check_schemas, parse_retentions, parse_schemas, schema_for

EXE = shutil.which("hops-stability", path=os.path.dirname(sys.executable)) or "hops-stability"
SHIPPED = graphite_conf_text("storage-schemas.conf")
#: Two scans on one day, 2019 (older than the 2 years Graphite's usual default keeps at 1 h).
SAME_DAY = ("Stability_20190312T080000.txt", "Stability_20190312T150000.txt")


def two_scans_on_one_day(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(SAME_DAY):
        text = render_report(16, 500, 32, 500.0 + 40 * i, 290.0 + 30 * i, -0.004, 2.5, random.Random(i))
        (directory / name).write_text(text)
        out.append(directory / name)
    return out


def values(path: Path, scanner: str, layout: MetricLayout) -> tuple[dict[str, float], int]:
    m = report_metrics(read_report(path), scanner, layout, resolve_timezone("UTC"))
    return {p: float(t) for p, t in zip(m.paths, m.texts)}, m.timestamp


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": "UTC"})


def test_retentions_and_first_match_as_carbon_reads_them():
    assert [(a.seconds_per_point, a.points) for a in parse_retentions("60s:7d,1h:2y,1d:30y")] == \
        [(60, 10080), (3600, 17520), (86400, 10950)]
    assert [(a.seconds_per_point, a.points) for a in parse_retentions("60:1440, 1hour:30years")] == \
        [(60, 1440), (3600, 262800)]
    entries = parse_schemas(SHIPPED)
    assert schema_for(entries, "hops.stability.bay1.32ch.snr.mean.01").name == "hops_stability"
    assert schema_for(entries, "servers.vm1.StabilityCollector.Harvard.Northwest.Bay1.32.SNR.sdpct.1").name == \
        "hops_stability_diamond_upstream"
    assert schema_for(entries, "StabilityCollector.Bay1.32.SNR.sdpct.1").name == "hops_stability_diamond_upstream"
    assert schema_for(entries, "Harvard.Northwest.Bay2.32.SNR.sdpct.1").name == "default"
    assert "two scans" in schema_for(entries, "Harvard.x").problem()
    only_carbon = parse_schemas("[carbon]\npattern = ^carbon\\.\nretentions = 60:90d\n")
    result = check_schemas(only_carbon, {"bay": ["Harvard.Bay2.32.SI.min.1"]})
    assert result.errors and "carbon's built-in fallback" in result.errors[0]
    with pytest.raises(ConfigError) as e:
        parse_schemas("[x]\npattern = ^a\nretentions = 1h:forever\n")
    assert e.value.key == "storage_schemas" and "[x]" in str(e.value)


def test_upstream_names_through_diamond_keep_two_scans_on_one_day_apart(graphite, tmp_path, scanner_name):
    """Diamond-prefixed upstream names fall under the shipped schema: 1 h, 30 years.  With
    carbon's usual default (1 day after 2 years) the later scan of a 2019 day overwrote the
    earlier one."""
    directory = tmp_path / scanner_name
    reports = two_scans_on_one_day(directory)
    layout = MetricLayout.from_options(layout="upstream",
                                       site=f"servers.hopsvm.StabilityCollector.Harvard.{scanner_name}")
    sender = GraphiteSender(GraphiteAddress.parse(graphite.line_address), timeout=5)
    ingestor = Ingestor([ScannerSource(scanner_name, directory, "UTC")], IngestSettings(layout, settle_seconds=0),
                        sender)
    assert ingestor.run_pass().count(Outcome.DELIVERED) == 2
    for report in reports:
        expected, ts = values(directory / "ingested" / report.name, scanner_name, layout)
        assert wait_for_values(graphite, expected, ts) == expected, report.name


def test_a_site_outside_the_shipped_schema_is_refused_or_warned_and_the_schema_command_fixes_it(tmp_path):
    directory = tmp_path / "bay2"
    two_scans_on_one_day(directory)
    shipped = tmp_path / "shipped-storage-schemas.conf"
    shipped.write_text(SHIPPED)
    upstream = ["--layout", "upstream", "--site", "Harvard.Northwest.Bay2", "--timezone", "UTC"]
    # carbon's file given: it would lose data, so ingest refuses to start and says what to add
    proc = run("ingest", str(directory), "--graphite", "127.0.0.1:9", *upstream, "--storage-schemas", str(shipped))
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: storage_schemas:" in proc.stderr
    assert "e.g. Harvard.Northwest.Bay2.32.SI.min.1, fall under [default]" in proc.stderr
    assert "it keeps one point per 1d of scans older than 2y (two scans on one day overwrite each other" in proc.stderr
    section = "[hops_stability_Harvard_Northwest_Bay2]\npattern = ^Harvard\\.Northwest\\.Bay2\\.\nretentions = 1h:30y\n"
    assert section in proc.stderr
    assert not (directory / "ingested").exists()
    # no file to check: it runs, with a loud warning naming the section
    proc = run("ingest", str(directory), "--graphite", "127.0.0.1:9", "--timeout", "1", *upstream)
    assert proc.returncode == 1 and "cannot verify carbon's storage schema" in proc.stderr and section in proc.stderr
    # the default names need no warning
    proc = run("ingest", str(directory), "--graphite", "127.0.0.1:9", "--timeout", "1")
    assert proc.returncode == 1 and "storage schema" not in proc.stderr
    # `schema` prints the section; with it first in carbon's file the check passes ...
    printed = run("schema", str(directory), *upstream)
    assert printed.returncode == 0 and section in printed.stdout
    fixed = tmp_path / "storage-schemas.conf"
    fixed.write_text(printed.stdout + "\n" + SHIPPED)
    proc = run("schema", str(directory), *upstream, "--storage-schemas", str(fixed))
    assert proc.returncode == 0 and "verified" in proc.stderr
    # ... and a real carbon with that file keeps both scans of the day
    with LocalGraphite(tmp_path / "graphite", storage_schemas=fixed.read_text()) as carbon:
        proc = run("ingest", str(directory), "--graphite", carbon.line_address, *upstream,
                   "--storage-schemas", str(fixed))
        assert proc.returncode == 0 and "2 delivered" in proc.stdout, proc.stderr
        layout = MetricLayout.from_options(layout="upstream", site="Harvard.Northwest.Bay2")
        for name in SAME_DAY:
            expected, ts = values(directory / "ingested" / name, "bay2", layout)
            assert wait_for_values(carbon, expected, ts) == expected, name
        import whisper
        info = whisper.info(str(carbon.whisper_path("Harvard.Northwest.Bay2.32.SNR.mean.1")))
        assert [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] == [(3600, 262800)]
