"""hops-qa against a real carbon-cache + graphite-web loaded with the sample reports:
the prisma1 service step and the vida2 ghosting episode are flagged, service events reset
the baseline and become graphite-web events, the long-running mode follows new scans and
events, and the report renders its charts."""
from __future__ import annotations

import base64
import datetime as _dt
import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from conftest import REPO

from stability_collector.core.graphite import GraphiteAddress, GraphiteSender
from stability_collector.ingest import Ingestor, IngestSettings, Outcome, ScannerSource
from stability_collector.localgraphite import LocalGraphite, free_port
from stability_collector.qa.cli import main as qa_main

UTC = _dt.timezone.utc
SERVICE_DAY = _dt.datetime(2025, 6, 16, tzinfo=UTC)
GHOST_EPISODE = (_dt.datetime(2025, 10, 6, tzinfo=UTC), _dt.datetime(2025, 10, 28, tzinfo=UTC))


def epoch(d: _dt.datetime) -> int:
    return int(d.timestamp())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """graphite-web with every sample report ingested (scan times read as UTC)."""
    base = tmp_path_factory.mktemp("qa")
    with LocalGraphite(base / "graphite", web=True) as g:
        shutil.copytree(REPO / "sample_statfiles", base / "scanners")
        sources = [ScannerSource(p.name, p, "UTC") for p in sorted((base / "scanners").iterdir())]
        summary = Ingestor(sources, IngestSettings(settle_seconds=0),
                           GraphiteSender(GraphiteAddress.parse(g.line_address))).run_pass()
        assert summary.count(Outcome.DELIVERED) == 117
        # every series the evaluator reads must exist before it runs (carbon creates files
        # asynchronously; under load the last ones appear seconds after delivery)
        g.wait_for_whisper([f"hops.stability.{scanner}.summary.{metric}"
                            for scanner in ("prisma1.32ch", "vida2.20ch", "vida2.48ch")
                            for metric in ("snr_mean", "fluctuation_pct", "drift_pct", "ghost_mean")], timeout=120)
        yield g


def qa(g: LocalGraphite, state, *args, capsys=None, web: str | None = None) -> tuple[int, str, str]:
    argv = [*args, "--graphite-web", web or g.web_url, "--state-dir", str(state), "--timezone", "UTC"]
    if args[0] in ("evaluate", "run"):
        argv += ["--graphite", g.line_address]
    code = qa_main(argv)
    out = capsys.readouterr() if capsys else None
    return code, out.out if out else "", out.err if out else ""


def series(g: LocalGraphite, target: str, frm="20250101", until="now", timeout=30.0) -> dict[int, float]:
    """The points of one series; waits while it has none (carbon creates whisper files
    asynchronously, and graphite-web only finds a metric once its file exists)."""
    deadline = time.monotonic() + timeout
    while True:
        result = g.render_json(target, frm, until)
        assert len(result) <= 1, [r["target"] for r in result]
        points = {t: v for v, t in result[0]["datapoints"] if v is not None} if result else {}
        if points or time.monotonic() > deadline:
            return points
        time.sleep(0.2)


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def graphite_events(g: LocalGraphite, tags: str) -> list[dict]:
    query = urllib.parse.urlencode({"from": "0", "until": "now", "tags": tags})
    with urllib.request.urlopen(f"{g.web_url}/events/get_data?{query}", timeout=30) as resp:
        return json.load(resp)


def test_evaluator_flags_the_prisma1_service_step_and_the_vida2_ghosting(loaded, tmp_path, capsys):
    code, out, err = qa(loaded, tmp_path / "state", "evaluate", capsys=capsys)
    assert code == 0, err
    assert "12 series evaluated" in out and "prisma1: last scan" in out and "OVERDUE" in out
    snr = series(loaded, "hops.qa.prisma1.32ch.snr_mean.status")
    values = series(loaded, "hops.stability.prisma1.32ch.summary.snr_mean")
    assert sorted(snr) == sorted(t - t % 3600 for t in values)          # one status per scan, at its time
    before = [s for t, s in snr.items() if t < epoch(SERVICE_DAY)]
    after = [s for t, s in snr.items() if t >= epoch(SERVICE_DAY)]
    assert len(before) == 23 and len(after) == 29
    assert sum(s > 0 for s in before) <= 2, before                       # in control before the service
    assert all(s >= 1 for s in after), after                              # the step: flagged, every scan
    ghost = series(loaded, "hops.qa.vida2.20ch.ghost_mean.status")
    in_episode = {t: s for t, s in ghost.items() if epoch(GHOST_EPISODE[0]) <= t < epoch(GHOST_EPISODE[1])}
    assert len(in_episode) == 3 and set(in_episode.values()) == {2}      # action level (ghost 3.6 > 3.5)
    assert all(s < 2 for t, s in ghost.items() if t < epoch(GHOST_EPISODE[0]))
    ghost48 = series(loaded, "hops.qa.vida2.48ch.ghost_mean.status")   # 13 scans: provisional baseline,
    assert [s for t, s in ghost48.items() if s] == [2]                  # but absolute levels still apply
    ucl = series(loaded, "hops.qa.prisma1.32ch.snr_mean.ucl")
    lcl = series(loaded, "hops.qa.prisma1.32ch.snr_mean.lcl")
    center = series(loaded, "hops.qa.prisma1.32ch.snr_mean.center")
    assert len(set(ucl.values())) == 1 and lcl[min(lcl)] < center[min(center)] < ucl[min(ucl)]
    assert series(loaded, "hops.qa.prisma1.32ch.snr_mean.tolerance_low")[min(center)] == pytest.approx(
        0.95 * center[min(center)], rel=1e-6)
    assert set(series(loaded, "hops.qa.prisma1.32ch.snr_mean.rule_we1").values()) <= {0.0, 1.0}
    days = series(loaded, "hops.qa.vida2.days_since_scan", frm="20251201")
    last_scan = max(series(loaded, "hops.stability.vida2.20ch.summary.snr_mean", frm="20251201"))
    assert max(days) >= time.time() - 2 * 3600
    assert days[max(days)] == pytest.approx((time.time() - last_scan) / 86400, abs=0.2)
    assert days[last_scan - last_scan % 3600] == 0
    overdue = series(loaded, "hops.qa.vida2.scan_overdue", frm="20251201")
    assert overdue[max(overdue)] == 1


def test_qa_results_use_the_shipped_storage_schema(loaded, tmp_path, capsys):
    import whisper
    assert qa(loaded, tmp_path / "state", "evaluate", "--scanner", "prisma1", capsys=capsys)[0] == 0
    for metric in ("hops.qa.prisma1.32ch.snr_mean.status", "hops.qa.prisma1.32ch.snr_mean.ucl",
                   "hops.qa.prisma1.days_since_scan"):
        info = whisper.info(str(loaded.whisper_path(metric)))
        assert [(a["secondsPerPoint"], a["retention"]) for a in info["archives"]] == [(3600, 30 * 365 * 86400)]
        assert info["xFilesFactor"] == 0
    status = whisper.info(str(loaded.whisper_path("hops.qa.prisma1.32ch.snr_mean.status")))
    assert status["aggregationMethod"] == "max"


def test_service_event_resets_the_baseline_and_becomes_a_graphite_event(loaded, tmp_path, capsys):
    state = tmp_path / "state"
    code, out, err = qa(loaded, state, "event", "add", "--scanner", "prisma1", "--what", "RF amplifier replaced",
                        "--when", "2025-06-16", capsys=capsys)
    assert code == 0, err
    assert "posted to graphite-web" in out
    events = graphite_events(loaded, "hops-service-prisma1")
    assert len(events) == 1 and events[0]["when"] == epoch(SERVICE_DAY)
    assert events[0]["what"] == "prisma1: RF amplifier replaced"
    assert set(events[0]["tags"]) == {"hops", "hops-service", "hops-service-prisma1", "prisma1"}
    assert qa(loaded, state, "evaluate", "--scanner", "prisma1", capsys=capsys)[0] == 0
    phase = series(loaded, "hops.qa.prisma1.32ch.snr_mean.phase")
    status = series(loaded, "hops.qa.prisma1.32ch.snr_mean.status")
    assert {p for t, p in phase.items() if t >= epoch(SERVICE_DAY)} == {2.0}
    assert {p for t, p in phase.items() if t < epoch(SERVICE_DAY)} == {1.0}
    after = [s for t, s in sorted(status.items()) if t >= epoch(SERVICE_DAY)]
    # the new level is the new normal: none of the 29 scans after the service is flagged any more
    # (without the event every one of them is, see the first test)
    assert after == [0] * 29, after
    centers = series(loaded, "hops.qa.prisma1.32ch.snr_mean.center")
    assert centers[max(centers)] > 1.05 * centers[min(centers)]        # the new baseline sits on the new level
    # syncing again never duplicates the annotation
    assert qa(loaded, state, "event", "sync", capsys=capsys)[0] == 0
    assert len(graphite_events(loaded, "hops-service-prisma1")) == 1
    code, out, _ = qa(loaded, state, "event", "list", capsys=capsys)
    assert "RF amplifier replaced" in out and "posted" in out and "2025-06-16T00:00+00:00" in out


def test_an_event_is_kept_while_graphite_web_is_down_and_posted_later(loaded, tmp_path, capsys):
    state = tmp_path / "state"
    down = f"http://127.0.0.1:{free_port()}"
    code, out, err = qa(loaded, state, "event", "add", "--scanner", "bay3", "--what", "gradient coil replaced",
                        "--when", "2025-03-01T12:00", web=down, capsys=capsys)
    assert code == 1 and "not yet in graphite-web" in err and "recorded event" in out
    stored = json.loads((state / "events.json").read_text())["events"]
    assert len(stored) == 1 and stored[0]["posted"] is False and stored[0]["scanner"] == "bay3"
    assert "PENDING" in qa(loaded, state, "event", "list", capsys=capsys)[1]
    assert graphite_events(loaded, "hops-service-bay3") == []
    code, out, err = qa(loaded, state, "event", "sync", capsys=capsys)
    assert code == 0 and "1 event(s) posted" in out, err
    assert len(graphite_events(loaded, "hops-service-bay3")) == 1
    assert qa(loaded, state, "event", "sync", capsys=capsys)[1].startswith("0 event(s) posted")
    assert len(graphite_events(loaded, "hops-service-bay3")) == 1


def test_unreachable_carbon_or_graphite_web_exit_1(loaded, tmp_path, capsys):
    argv = ["evaluate", "--graphite-web", loaded.web_url, "--graphite", f"127.0.0.1:{free_port()}",
            "--state-dir", str(tmp_path)]
    assert qa_main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot connect to Graphite" in err
    argv = ["evaluate", "--graphite-web", f"http://127.0.0.1:{free_port()}", "--graphite", loaded.line_address,
            "--state-dir", str(tmp_path)]
    assert qa_main(argv) == 1
    assert "cannot reach graphite-web" in capsys.readouterr().err


def test_configuration_errors_exit_2_and_name_the_key(tmp_path, capsys):
    bad = tmp_path / "qa.toml"
    bad.write_text('graphite_web = "http://x"\nrules = ["we1", "westgard"]\n')
    assert qa_main(["evaluate", "--config", str(bad)]) == 2
    assert "configuration error: rules: unknown rule 'westgard'" in capsys.readouterr().err
    assert qa_main(["event", "add", "--scanner", "p", "--what", "x", "--when", "16/06/2025",
                    "--graphite-web", "http://127.0.0.1:9", "--state-dir", str(tmp_path)]) == 2
    assert "--when: expected YYYY-MM-DD" in capsys.readouterr().err


def _send_scans(g: LocalGraphite, scanner: str, points: dict[int, float]) -> None:
    sender = GraphiteSender(GraphiteAddress.parse(g.line_address))
    sender.deliver("".join(f"hops.stability.{scanner}.32ch.summary.snr_mean {v} {t}\n" for t, v in points.items()))


def test_long_running_mode_follows_new_scans_and_service_events(loaded, tmp_path):
    scanner = "livescan"
    now = int(time.time())
    week = 7 * 86400
    first = now - 25 * week
    scans = {first + i * week: 300.0 + (1.0 if i % 2 else -1.0) + 0.1 * (i % 5) for i in range(25)}
    _send_scans(loaded, scanner, scans)
    loaded.wait_for_whisper([f"hops.stability.{scanner}.32ch.summary.snr_mean"])
    state = tmp_path / "state"
    # an event recorded while graphite-web was down: the running evaluator posts it
    assert qa_main(["event", "add", "--scanner", scanner, "--what", "body coil replaced", "--when",
                    _dt.datetime.fromtimestamp(first + 3 * week + 3600, UTC).isoformat(),
                    "--graphite-web", f"http://127.0.0.1:{free_port()}", "--state-dir", str(state)]) == 1
    config = tmp_path / "qa.toml"
    config.write_text(f'graphite = "{loaded.line_address}"\ngraphite_web = "{loaded.web_url}"\n'
                      f'state_dir = "{state}"\npoll_interval = 1\nbaseline_scans = 10\n')
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "stability_collector.qa.cli", "-v", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)

    def wait_for(predicate, timeout, what):
        def alive_and():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            return predicate()
        return globals()["wait_for"](alive_and, timeout, what)

    try:
        target = f"hops.qa.{scanner}.32ch.snr_mean"
        status = wait_for(lambda: len(series(loaded, f"{target}.status", frm=str(first - 3600), timeout=0)) == 25 and
                          series(loaded, f"{target}.status", frm=str(first - 3600)), 60, "the first pass")
        assert set(status.values()) == {0.0}
        assert wait_for(lambda: graphite_events(loaded, f"hops-service-{scanner}"), 30, "the pending event posted")
        phases = series(loaded, f"{target}.phase", frm=str(first - 3600))
        assert sorted(set(phases.values())) == [1.0, 2.0]
        # a new scan, 15 % low: action level within a few polls
        new_scan = now - 600
        _send_scans(loaded, scanner, {new_scan: 255.0})
        slot = new_scan - new_scan % 3600
        wait_for(lambda: series(loaded, f"{target}.status", frm=str(first - 3600)).get(slot) == 2, 30,
                 "the new scan evaluated")
        # a service event added while it runs: re-evaluated with a third phase
        assert qa_main(["event", "add", "--scanner", scanner, "--what", "coil replaced", "--when",
                        _dt.datetime.fromtimestamp(first + 15 * week, UTC).isoformat(), "--graphite-web",
                        loaded.web_url, "--state-dir", str(state)]) == 0
        wait_for(lambda: 3.0 in series(loaded, f"{target}.phase", frm=str(first - 3600)).values(), 30,
                 "re-evaluation after the event")
        days = series(loaded, f"hops.qa.{scanner}.days_since_scan", frm=str(now - 86400))
        assert days and days[max(days)] < 0.1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_renders_control_charts_events_and_violations(loaded, tmp_path, capsys):
    state = tmp_path / "state"
    assert qa(loaded, state, "event", "add", "--scanner", "vida2", "--coil", "20ch", "--what", "head coil repaired",
              "--when", "2025-11-03", capsys=capsys)[0] == 0
    out_html, out_pdf, charts = tmp_path / "r.html", tmp_path / "r.pdf", tmp_path / "charts"
    code, out, err = qa(loaded, state, "report", "--scanner", "vida2", "--since", "2025-01-01", "--out", str(out_html),
                        "--pdf", str(out_pdf), "--charts-dir", str(charts), capsys=capsys)
    assert code == 0, err
    page = out_html.read_text()
    figures = dict(re.findall(r"<figure id='chart-([^']+)'><img alt='[^']*' src='data:image/png;base64,([^']+)'>", page))
    expected = {f"{coil}-{m}" for coil in ("20ch", "48ch") for m in ("snr_mean", "fluctuation_pct", "drift_pct",
                                                                      "ghost_mean")}
    assert set(figures) == expected
    for name, data in figures.items():
        png = base64.b64decode(data)
        assert _png_size(png) == (1100, 380), name
        assert len(png) > 20_000, name                     # a drawn chart, not an empty frame
        assert (charts / f"vida2-{name}.png").read_bytes() == png
    assert "head coil repaired" in page
    violations = page[page.index("<table id='violations'>"):]
    violations = violations[:violations.index("</table>")]
    ghost_rows = [r for r in violations.split("<tr")[1:] if "summary.ghost_mean" in r and ">action<" in r]
    assert {re.search(r"<td>(\d{4}-\d\d-\d\d)", r).group(1) for r in ghost_rows} >= {
        "2025-10-07", "2025-10-14", "2025-10-21"}
    assert all("above the action level 3.5" in r for r in ghost_rows)
    assert "<table id='missed'>" in page and "none yet" in page          # overdue since the last sample scan
    pdf = out_pdf.read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 9


def test_alert_rule_queries_see_the_qa_results(loaded, tmp_path, capsys):
    import yaml
    assert qa(loaded, tmp_path / "state", "evaluate", capsys=capsys)[0] == 0
    rules = yaml.safe_load((REPO / "deploy/grafana/provisioning/alerting/hops-alerts.yaml").read_text())
    by_uid = {r["uid"]: r for r in rules["groups"][0]["rules"]}
    action = by_uid["hops-qa-action"]["data"][0]["model"]["target"]
    # the week of the last ghosting scan: the last status of vida2 20ch ghost is 2
    week = loaded.render_json(action, "20251015", "20251022")
    last = {s["target"]: [v for v, _ in s["datapoints"] if v is not None][-1] for s in week
            if any(v is not None for v, _ in s["datapoints"])}
    assert last["hops.qa.vida2.20ch.ghost_mean.status"] == 2
    assert last["hops.qa.vida2.20ch.fluctuation_pct.status"] == 0
    overdue = by_uid["hops-qa-scan-overdue"]["data"][0]["model"]["target"]
    now_values = {s["target"]: [v for v, _ in s["datapoints"] if v is not None]
                  for s in loaded.render_json(overdue, "-2d", "now")}
    assert {"hops.qa.prisma1.scan_overdue", "hops.qa.vida2.scan_overdue"} <= set(now_values)
    assert now_values["hops.qa.prisma1.scan_overdue"][-1] == now_values["hops.qa.vida2.scan_overdue"][-1] == 1


def test_fbirn_series_of_the_qa_bucket_are_evaluated_the_same_way(loaded, tmp_path, capsys):
    """hops.stability.<scanner>.<coil>.fbirn.<metric> (the vendor-neutral QA bucket's output) is
    read and judged like the Siemens summaries; deeper branches (per-slice values) are skipped."""
    now = int(time.time())
    week = 7 * 86400
    times = [now - (30 - i) * week for i in range(30)]
    lines = []
    for i, t in enumerate(times):
        sfnr = 250.0 + (0.8 if i % 2 else -0.8) - (40.0 if i == 29 else 0.0)    # the last scan: 16 % low
        lines.append(f"hops.stability.ge1.head32.fbirn.sfnr {sfnr} {t}\n")
        lines.append(f"hops.stability.ge1.head32.fbirn.rdc {4.0 + 0.05 * (i % 3)} {t}\n")
        lines.append(f"hops.stability.ge1.head32.fbirn.sfnr_slice.01 {sfnr} {t}\n")
    GraphiteSender(GraphiteAddress.parse(loaded.line_address)).deliver("".join(lines))
    loaded.wait_for_whisper(["hops.stability.ge1.head32.fbirn.sfnr", "hops.stability.ge1.head32.fbirn.rdc"])
    code, out, err = qa(loaded, tmp_path / "state", "evaluate", "--scanner", "ge1", capsys=capsys)
    assert code == 0, err
    assert "2 series evaluated" in out and "ge1/head32 fbirn.sfnr" in out and "ge1/head32 fbirn.rdc" in out
    status = series(loaded, "hops.qa.ge1.head32.fbirn_sfnr.status", frm=str(times[0] - 3600))
    assert len(status) == 30 and status[times[-1] - times[-1] % 3600] == 2 and sum(status.values()) == 2
    # the SNR/SFNR default levels apply to fbirn.sfnr; rdc has none: rules only
    low = series(loaded, "hops.qa.ge1.head32.fbirn_sfnr.action_low", frm=str(times[0] - 3600))
    assert low[max(low)] == pytest.approx(0.9 * 250.0, rel=1e-3)
    assert loaded.render_json("hops.qa.ge1.head32.fbirn_rdc.action_*", str(times[0] - 3600), "now") == []
    assert len(series(loaded, "hops.qa.ge1.head32.fbirn_rdc.status", frm=str(times[0] - 3600))) == 30


def test_dry_run_prints_the_result_lines_without_sending(loaded, tmp_path, capsys):
    argv = ["evaluate", "--dry-run", "--scanner", "vida2", "--graphite-web", loaded.web_url,
            "--state-dir", str(tmp_path), "--timezone", "UTC"]
    assert qa_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("hops.qa.vida2.") for line in out)
    ghost = {int(ts): float(v) for path, v, ts in (line.split() for line in out)
             if path == "hops.qa.vida2.20ch.ghost_mean.status"}
    # graphite-web answers in whisper's 1-hour slots: the scans at 07:xx are stored at 07:00
    assert sorted(t for t, v in ghost.items() if v == 2) == [epoch(_dt.datetime(2025, 10, d, 7, tzinfo=UTC))
                                                             for d in (7, 14, 21)]
