"""The installed ``hops-stability`` command, run as a user would run it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REFERENCE, TRUNCATED, copy_reports, good_reference_reports, reference_reports, wait_for_values

from stability_collector.metrics import MetricLayout, report_metrics, resolve_timezone
from stability_collector.report import read_report

EXE = shutil.which("hops-stability", path=os.path.dirname(sys.executable)) or "hops-stability"


def run(*args: str, check_rc: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TZ": "UTC"})
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def values_of(path: Path, scanner: str, tz: str = "UTC"):
    m = report_metrics(read_report(path), scanner, MetricLayout(), resolve_timezone(tz))
    return {p: float(t) for p, t in zip(m.paths, m.texts)}, m.timestamp


def test_parse_prints_graphite_lines_and_json():
    ref = REFERENCE / "Stability_20180910T090910.txt"
    out = run("parse", str(ref), "--scanner", "bay1", "--timezone", "Europe/Berlin").stdout.splitlines()
    assert out[0] == "hops.stability.bay1.32ch.si.min.01 402.36 1536563350"
    assert "hops.stability.bay1.32ch.fit.p2.16 0.000002 1536563350" in out
    assert len(out) == 457
    import json
    doc = json.loads(run("parse", str(ref), "--format", "json").stdout)
    assert doc["scanner"] == "hops" and doc["channels"] == 32 and len(doc["datapoints"]) == 457


def test_parse_truncated_file_exits_nonzero_with_line_and_expectation():
    proc = run("parse", str(REFERENCE / TRUNCATED), check_rc=1)
    assert f"{TRUNCATED}:23: expected 'Stability SIfit results:', found the end of the file" in proc.stderr
    assert proc.stdout == ""


def test_ingest_exit_codes_and_output(own_carbon, tmp_path):
    bay = tmp_path / "bay7"
    copy_reports(reference_reports(), bay)
    own_carbon.stop_carbon()
    proc = run("ingest", str(bay), "--graphite", own_carbon.line_address, "--settle-seconds", "0",
               "--timeout", "2", check_rc=1)
    assert proc.stdout.count("undelivered") >= 3 and "cannot connect to Graphite" in proc.stdout
    assert "3 undelivered, 1 quarantined" in proc.stdout    # parse errors do not need Graphite
    assert f"{TRUNCATED}:23: expected" in proc.stdout
    assert not (bay / "ingested").exists()
    own_carbon.start_carbon()
    proc = run("ingest", f"scanner7={bay}", "--graphite", own_carbon.line_address, "--settle-seconds", "0")
    assert "3 delivered" in proc.stdout
    for ref in good_reference_reports():
        expected, ts = values_of(ref, "scanner7")
        found = wait_for_values(own_carbon, expected, ts)
        assert found == expected
    proc = run("ingest", str(bay), "--graphite", own_carbon.line_address)
    assert "no reports" in proc.stdout
    (bay / "Stability_20990101T000000.txt").write_text("not a report\n")
    proc = run("ingest", str(bay), "--graphite", own_carbon.line_address, "--settle-seconds", "0", check_rc=3)
    assert "1 quarantined" in proc.stdout


def test_replay_after_a_graphite_rebuild_with_since(own_carbon, tmp_path):
    bay = tmp_path / "bay8"
    copy_reports(good_reference_reports(), bay)
    run("ingest", str(bay), "--graphite", own_carbon.line_address)
    own_carbon.stop_carbon()
    shutil.rmtree(own_carbon.whisper_dir)          # "Graphite rebuild"
    own_carbon.whisper_dir.mkdir()
    own_carbon.start_carbon()
    proc = run("replay", str(bay / "ingested"), "--graphite", own_carbon.line_address, "--since", "2018-06-01")
    assert "1 report(s) re-sent (457 datapoints), 2 outside the date range" in proc.stdout
    assert "100%" in proc.stderr                    # the progress bar
    sept = REFERENCE / "Stability_20180910T090910.txt"
    expected, ts = values_of(sept, "bay8")
    assert wait_for_values(own_carbon, expected, ts) == expected
    jan = REFERENCE / "Stability_20180124T092731.txt"
    expected_jan, ts_jan = values_of(jan, "bay8")
    assert not own_carbon.whisper_path(next(iter(expected_jan))).exists() or \
        wait_for_values(own_carbon, expected_jan, ts_jan, timeout=1) != expected_jan
    proc = run("replay", str(bay / "ingested"), "--graphite", own_carbon.line_address, "--no-progress")
    assert "3 report(s) re-sent" in proc.stdout
    assert wait_for_values(own_carbon, expected_jan, ts_jan) == expected_jan
    assert sorted(p.name for p in (bay / "ingested").iterdir()) == sorted(p.name for p in good_reference_reports())


def test_watch_ingests_new_reports_and_stops_on_sigterm(own_carbon, tmp_path):
    bay = tmp_path / "bay9"
    bay.mkdir()
    proc = subprocess.Popen([EXE, "watch", str(bay), "--graphite", own_carbon.line_address,
                             "--settle-seconds", "1", "--poll-interval", "0.5", "--timezone", "UTC"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        copy_reports(reference_reports(), bay)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            archived = list((bay / "ingested").glob("*.txt")) if (bay / "ingested").exists() else []
            if len(archived) == 3 and (bay / "failed" / TRUNCATED).exists():
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(list((bay / "ingested").glob("*.txt"))) == 3
    assert (bay / "failed" / TRUNCATED).exists()
    assert out.count("delivered ") == 3 and "quarantined" in out
    # the waiting message is logged once, not every poll
    assert err.count("not (yet) a complete report") == 1
    for ref in good_reference_reports():
        expected, ts = values_of(ref, "bay9")
        assert wait_for_values(own_carbon, expected, ts) == expected


def test_configuration_errors_name_the_key(tmp_path):
    proc = run("ingest", str(tmp_path), "--graphite", "localhost:notaport", check_rc=2)
    assert "graphite: port must be a number" in proc.stderr
    proc = run("ingest", str(tmp_path), check_rc=2)
    assert "graphite: no Graphite address" in proc.stderr
    cfg = tmp_path / "hops.toml"
    cfg.write_text('graphite = "127.0.0.1:2003"\nsettle_secs = 3\n')
    proc = run("ingest", "--config", str(cfg), check_rc=2)
    assert "settle_secs: unknown setting" in proc.stderr
    cfg.write_text('graphite = "127.0.0.1:2003"\n[scanners.bay]\ndirectory = "/x"\ntimezone = "Nowhere/City"\n')
    proc = run("ingest", "--config", str(cfg), check_rc=2)
    assert "scanners.bay.timezone: unknown IANA time zone 'Nowhere/City'" in proc.stderr
    cfg.write_text('graphite = "127.0.0.1:2003"\nmetric_template = "{prefix}.{scanner}"\n')
    proc = run("ingest", "--config", str(cfg), str(tmp_path), check_rc=2)
    assert "metric_template:" in proc.stderr
    proc = run("ingest", str(tmp_path), "--graphite", "127.0.0.1:2003", "--archive-subdir", "../x", check_rc=2)
    assert "archive_subdir: must be a plain sub-directory name" in proc.stderr


def test_config_file_scanners_and_coil_map(own_carbon, tmp_path):
    bay = tmp_path / "share" / "whatever"
    copy_reports([REFERENCE / "Stability_20180124T133423.txt"], bay)
    cfg = tmp_path / "hops.toml"
    cfg.write_text(f'graphite = "{own_carbon.line_address}"\ncoil_map = {{ 48 = "headneck64" }}\n'
                   f'[scanners.skyra]\ndirectory = "{bay}"\ntimezone = "Europe/Berlin"\n')
    proc = run("ingest", "--config", str(cfg))
    assert "1 delivered" in proc.stdout
    metric = "hops.stability.skyra.headneck64.snr.mean.01"
    ref = read_report(REFERENCE / "Stability_20180124T133423.txt")
    ts = report_metrics(ref, "skyra", MetricLayout(), resolve_timezone("Europe/Berlin")).timestamp
    assert wait_for_values(own_carbon, {metric: 326.39}, ts) == {metric: 326.39}


def test_magickbox_stub_prints_help():
    exe = shutil.which("magickbox", path=os.path.dirname(sys.executable))
    proc = subprocess.run([exe], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: magickbox" in proc.stdout


def test_every_command_resolves_the_configured_scanner_name_and_zone(own_carbon, tmp_path):
    """A config whose scanner name differs from its directory and whose zone differs from
    the default (the tests run with TZ=UTC): parse, replay and ingest DIR all use both."""
    bay = tmp_path / "share" / "whatever"
    ref = REFERENCE / "Stability_20180910T090910.txt"
    copy_reports([ref], bay)
    cfg = tmp_path / "hops.toml"
    cfg.write_text(f'graphite = "{own_carbon.line_address}"\n'
                   f'[scanners.skyra]\ndirectory = "{bay}"\ntimezone = "Asia/Tokyo"\n')
    expected, ts = values_of(ref, "skyra", "Asia/Tokyo")
    first = f"hops.stability.skyra.32ch.si.min.01 402.36 {ts}"
    assert run("parse", "--config", str(cfg), str(bay / ref.name)).stdout.splitlines()[0] == first
    # ingest with the directory on the command line (not only from [scanners])
    assert "1 delivered" in run("ingest", "--config", str(cfg), str(bay)).stdout
    assert wait_for_values(own_carbon, expected, ts) == expected
    archived = bay / "ingested" / ref.name
    assert run("parse", "--config", str(cfg), str(archived)).stdout.splitlines()[0] == first
    assert run("parse", "--config", str(cfg), "--scanner", "skyra", str(ref)).stdout.splitlines()[0] == first
    # a Graphite rebuild, then replay of the archive
    own_carbon.stop_carbon()
    shutil.rmtree(own_carbon.whisper_dir)
    own_carbon.whisper_dir.mkdir()
    own_carbon.start_carbon()
    proc = run("replay", str(bay / "ingested"), "--config", str(cfg), "--no-progress")
    assert "1 report(s) re-sent" in proc.stdout
    assert wait_for_values(own_carbon, expected, ts) == expected
    assert sorted(p.name for p in (own_carbon.whisper_dir / "hops" / "stability").iterdir()) == ["skyra"]


def test_future_report_is_held_by_ingest_and_replay_and_one_site_for_two_scanners_is_refused(tmp_path):
    import datetime as dt
    bay = tmp_path / "bayF"
    bay.mkdir()
    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    future = bay / ahead.strftime("Stability_%Y%m%dT%H%M%S.txt")
    future.write_bytes((REFERENCE / "Stability_20180910T090910.txt").read_bytes())
    proc = run("ingest", str(bay), "--graphite", "127.0.0.1:9", "--timeout", "1", check_rc=1)
    assert "held" in proc.stdout and "1 held" in proc.stdout and "ahead of this host's clock" in proc.stdout
    assert "in time zone this host's zone (UTC)" in proc.stdout
    assert future.exists() and not (bay / "ingested").exists()
    assert "carbon discards datapoints from the future" in run("parse", str(future)).stderr
    (bay / "ingested").mkdir()
    future.rename(bay / "ingested" / future.name)
    proc = run("replay", str(bay / "ingested"), "--graphite", "127.0.0.1:9", "--no-progress", check_rc=1)
    assert "0 report(s) re-sent" in proc.stdout and "1 held (scan time in the future)" in proc.stdout
    cfg = tmp_path / "two.toml"
    cfg.write_text(f'graphite = "127.0.0.1:9"\nlayout = "upstream"\nsite = "Harvard.Northwest.Bay1"\n'
                   f'[scanners.a]\ndirectory = "{tmp_path / "a"}"\n[scanners.b]\ndirectory = "{tmp_path / "b"}"\n')
    proc = run("ingest", "--config", str(cfg), check_rc=2)
    assert "site: scanners 'a' and 'b' would write the same metrics" in proc.stderr
    proc = run("ingest", str(tmp_path / "x" / "bay"), str(tmp_path / "y" / "bay"), "--graphite", "127.0.0.1:9",
               check_rc=2)
    assert "directories: two scanner directories are both named 'bay'" in proc.stderr
