"""Metric naming, time stamps (scan time in the scanner's zone) and summaries."""
from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from conftest import REFERENCE, REPO, good_reference_reports
from upstream_original import diamond_prefix, original_collector_names

from stability_collector.core.errors import ConfigError
from stability_collector.metrics import (
    LAYOUTS,
    MetricLayout,
    parse_coil_map,
    report_metrics,
    resolve_timezone,
    scan_epoch,
    summaries,
)
from stability_collector.report import read_report

DATA = REPO / "tests" / "data"
R32 = REFERENCE / "Stability_20180910T090910.txt"
R48 = REFERENCE / "Stability_20180124T133423.txt"


def lines_of(metrics) -> dict[str, str]:
    out = {}
    for line in metrics.graphite_lines().splitlines():
        path, value, stamp = line.split(" ")
        assert int(stamp) == metrics.timestamp
        out[path] = value
    return out


def test_default_layout_paths_and_values():
    metrics = report_metrics(read_report(R32), "prisma1", MetricLayout(), resolve_timezone("UTC"))
    got = lines_of(metrics)
    assert got["hops.stability.prisma1.32ch.si.min.01"] == "402.36"
    assert got["hops.stability.prisma1.32ch.sifit.sdpct.16"] == "0.027"
    assert got["hops.stability.prisma1.32ch.snr.p2ppct.03"] == "87.077"
    assert got["hops.stability.prisma1.32ch.ghost.sd.12"] == "0.028"
    assert got["hops.stability.prisma1.32ch.fit.p0.01"] == "403.419203"
    assert got["hops.stability.prisma1.32ch.fit.p2.01"] == "0.000004"      # not "0.00"
    assert got["hops.stability.prisma1.32ch.fit.p1.14"] == "0.000520"
    assert got["hops.stability.prisma1.32ch.fit.p1.01"] == "-0.003500"
    table_values = [p for p in got if ".summary." not in p]
    assert len(table_values) == 16 * (4 * 6 + 4) == len(set(table_values))
    assert metrics.timestamp == int(dt.datetime(2018, 9, 10, 9, 9, 10, tzinfo=dt.timezone.utc).timestamp())


def test_scan_time_in_the_scanner_time_zone_not_ingest_time():
    report = read_report(R32)
    ny = report_metrics(report, "s", MetricLayout(), resolve_timezone("America/New_York")).timestamp
    berlin = report_metrics(report, "s", MetricLayout(), resolve_timezone("Europe/Berlin")).timestamp
    assert ny == int(dt.datetime(2018, 9, 10, 13, 9, 10, tzinfo=dt.timezone.utc).timestamp())   # EDT
    assert berlin == int(dt.datetime(2018, 9, 10, 7, 9, 10, tzinfo=dt.timezone.utc).timestamp())  # CEST
    assert abs(ny - time.time()) > 365 * 86400
    # default: the host's zone
    assert report_metrics(report, "s", MetricLayout()).timestamp == int(dt.datetime(2018, 9, 10, 9, 9, 10).timestamp())
    # winter time
    assert scan_epoch(dt.datetime(2018, 1, 24, 9, 27, 31), resolve_timezone("America/New_York")) == \
        int(dt.datetime(2018, 1, 24, 14, 27, 31, tzinfo=dt.timezone.utc).timestamp())


def test_coil_map_and_prefix():
    layout = MetricLayout.from_options(coil_map="32=head32, 48=headneck64", prefix="site.mri")
    m = report_metrics(read_report(R48), "bay 2/x", layout)
    assert "site.mri.bay_2_x.headneck64.snr.mean.16" in lines_of(m)
    assert parse_coil_map({20: "head 20"}) == {20: "head_20"}
    assert MetricLayout().coil_for(20) == "20ch"


def test_upstream_layout_reproduces_original_collector_paths():
    layout = MetricLayout.from_options(layout="upstream", site="Harvard.Northwest.TestBay2")
    got = lines_of(report_metrics(read_report(R48), "ignored", layout))
    assert got["Harvard.Northwest.TestBay2.64.SNR.sdpct.1"] == "10.264"
    assert got["Harvard.Northwest.TestBay2.64.fit.p2.16"] == "0.000006"
    assert got["Harvard.Northwest.TestBay2.64.SIfit.P2Ppct.10"] == "0.173"
    assert not [p for p in got if "[" in p or "%" in p]
    assert "Harvard.Northwest.TestBay2.64.summary.snr_mean" in got
    # without a site path the upstream layout uses <prefix>.<scanner>
    got = lines_of(report_metrics(read_report(R32), "bay3", MetricLayout.from_options(layout="upstream")))
    assert "hops.stability.bay3.32.SI.min.1" in got


def test_upstream_names_equal_the_original_collectors_for_every_reference_report():
    """Names (and time stamps) the original collector itself published under diamond-next
    (tests/data/original_collector_names.json), and our restatement of its rules."""
    recorded = json.loads((DATA / "original_collector_names.json").read_text())
    location = recorded["location"].replace("/", ".")
    prefix = diamond_prefix(recorded["diamond"]["path_prefix"], recorded["diamond"]["hostname"])
    layout = MetricLayout.from_options(layout="upstream", site=f"{prefix}.{location}")
    for path in good_reference_reports():
        metrics = report_metrics(read_report(path), "bay1", layout, resolve_timezone(recorded["tz"]))
        table = {p: float(t) for p, t in zip(metrics.paths, metrics.texts) if ".summary." not in p}
        original = recorded["reports"][path.name]
        assert sorted(table) == original["paths"], path.name
        assert [metrics.timestamp] == original["timestamps"]
        restated = original_collector_names(path, location, prefix)
        assert sorted(restated) == original["paths"]
        assert table == {p: float(v) for p, v in restated.items()}      # every value, as printed


def test_upstream_coil_map_includes_64_channels(tmp_path):
    report64 = tmp_path / R48.name
    report64.write_text(R48.read_text().replace("48 channels", "64 channels", 1))
    layout = MetricLayout.from_options(layout="upstream", site="Harvard.Northwest.Bay1")
    got = lines_of(report_metrics(read_report(report64), "x", layout))
    table = {p: float(v) for p, v in got.items() if ".summary." not in p}
    original = original_collector_names(report64, "Harvard.Northwest.Bay1")
    assert "Harvard.Northwest.Bay1.64.SNR.mean.1" in original
    assert table == {p: float(v) for p, v in original.items()}
    assert dict(LAYOUTS["upstream"].coil_map) == {32: "32", 48: "64", 64: "64"}


def test_a_template_with_bracketed_column_names_is_refused():
    with pytest.raises(ConfigError) as e:
        MetricLayout.from_options(template="{site}.{coil}.{Section}.{column_raw}.{slice_raw}")
    assert e.value.key == "metric_template" and "{Column}" in str(e.value)


def test_custom_template_and_validation_names_the_key():
    layout = MetricLayout.from_options(template="mri.{scanner}.{section}.{slice}.{column}")
    assert "mri.x.snr.01.mean" in lines_of(report_metrics(read_report(R32), "x", layout))
    with pytest.raises(ConfigError) as e:
        MetricLayout.from_options(template="{prefix}.{scanner}.{section}.{column}")
    assert e.value.key == "metric_template" and "{slice}" in str(e.value)
    with pytest.raises(ConfigError) as e:
        MetricLayout.from_options(template="{prefix}.{scaner}.{section}.{column}.{slice}")
    assert e.value.key == "metric_template" and "scaner" in str(e.value)
    with pytest.raises(ConfigError) as e:
        MetricLayout.from_options(summary_template="{prefix}..{name}")
    assert e.value.key == "summary_template"
    with pytest.raises(ConfigError) as e:
        MetricLayout.from_options(layout="nope")
    assert e.value.key == "layout"
    with pytest.raises(ConfigError) as e:
        parse_coil_map("32:head")
    assert e.value.key == "coil_map"
    with pytest.raises(ConfigError) as e:
        resolve_timezone("Mars/Olympus")
    assert e.value.key == "timezone"


def test_summaries_are_what_a_physicist_expects():
    report = read_report(REFERENCE / "Stability_20180124T092731.txt")
    s = summaries(report)
    snr = report.section("SNR").column("mean")
    assert s["snr_mean"] == pytest.approx(sum(snr) / 16)
    assert s["fluctuation_pct"] == pytest.approx(sum(report.section("SIfit").column("sd[%]")) / 16)
    p0, p1, p2, _ = report.section("fit").values[0]
    slice1_drift = (p1 * 499 + p2 * 499 ** 2) / p0 * 100
    assert slice1_drift == pytest.approx(-0.1944, abs=1e-3)
    # the fit's mean over the run equals the SI mean (checks t = 0 .. M-1 as the fit's time axis)
    fit_mean = p0 + p1 * 249.5 + p2 * (499 * 999 / 6)
    assert fit_mean == pytest.approx(report.section("SI").values[0][2], abs=0.05)
    assert s["ghost_mean"] == pytest.approx(sum(report.section("ghost").column("mean")) / 16)
    assert s["si_p2p_pct_max"] == max(report.section("SI").column("P2P[%]"))
    assert -1 < s["drift_pct"] < 0


def test_json_agrees_with_lines():
    import json
    metrics = report_metrics(read_report(R32), "j", MetricLayout(), resolve_timezone("UTC"))
    lines = metrics.graphite_lines().splitlines()
    doc = json.loads(metrics.as_json())
    assert doc["timestamp"] == metrics.timestamp and len(doc["datapoints"]) == len(lines) == len(metrics)
