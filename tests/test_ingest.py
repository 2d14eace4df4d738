"""Ingest against a real carbon-cache: values in whisper, archive only after delivery,
quarantine, outages, half-written files, idempotence."""
from __future__ import annotations

import datetime
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import TRUNCATED, copy_reports, good_reference_reports, reference_reports, wait_for_values

from stability_collector.core.errors import ConfigError
from stability_collector.core.graphite import GraphiteAddress, GraphiteSender
from stability_collector.ingest import Ingestor, IngestSettings, Outcome, ScannerSource
from stability_collector.metrics import MetricLayout, report_metrics, resolve_timezone
from stability_collector.report import read_report
from stability_collector.watch import watch


def make_ingestor(graphite, directory: Path, scanner: str, settle: float = 0.0, tz: str = "UTC",
                  trust_file_times: bool = False) -> Ingestor:
    sender = GraphiteSender(GraphiteAddress.parse(graphite.line_address), timeout=5)
    return Ingestor([ScannerSource(scanner, directory, tz)], IngestSettings(settle_seconds=settle), sender,
                    trust_file_times=trust_file_times)


def expected_values(path: Path, scanner: str, tz: str = "UTC"):
    metrics = report_metrics(read_report(path), scanner, MetricLayout(), resolve_timezone(tz))
    return {p: float(t) for p, t in zip(metrics.paths, metrics.texts)}, metrics.timestamp


def assert_in_whisper(graphite, path: Path, scanner: str, tz: str = "UTC") -> int:
    expected, timestamp = expected_values(path, scanner, tz)
    found = wait_for_values(graphite, expected, timestamp)
    wrong = {m: (found.get(m), v) for m, v in expected.items() if found.get(m) != v}
    assert not wrong, f"{len(wrong)} of {len(expected)} values wrong/missing, e.g. {list(wrong.items())[:3]}"
    return len(expected)


def test_every_reference_value_lands_in_whisper_at_the_scan_time(graphite, tmp_path, scanner_name):
    directory = tmp_path / scanner_name
    copy_reports(reference_reports(), directory)
    summary = make_ingestor(graphite, directory, scanner_name).run_pass()
    assert summary.count(Outcome.DELIVERED) == 3 and summary.count(Outcome.QUARANTINED) == 1
    total = 0
    for path in good_reference_reports():
        assert not (directory / path.name).exists()
        assert (directory / "ingested" / path.name).read_bytes() == path.read_bytes()
        total += assert_in_whisper(graphite, path, scanner_name)
    assert total == 3 * (448 + 9)
    # the truncated report is quarantined with an explanation, never deleted
    failed = directory / "failed" / TRUNCATED
    assert failed.read_bytes() == (reference_reports()[0]).read_bytes()
    error = (directory / "failed" / (TRUNCATED + ".error")).read_text()
    assert f"{TRUNCATED}:23: expected 'Stability SIfit results:', found the end of the file" in error
    assert sorted(os.listdir(directory)) == ["failed", "ingested"]


def test_graphite_down_nothing_archived_then_each_report_delivered_once(own_carbon, tmp_path):
    directory = tmp_path / "bay"
    copy_reports(good_reference_reports(), directory)
    ingestor = make_ingestor(own_carbon, directory, "bay")
    own_carbon.stop_carbon()
    for _ in range(2):
        summary = ingestor.run_pass()
        assert summary.count(Outcome.UNDELIVERED) == 3
        assert "cannot connect to Graphite" in summary.results[0].detail
        assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in good_reference_reports())
    assert not (directory / "ingested").exists()
    own_carbon.start_carbon()
    summary = ingestor.run_pass()
    assert summary.count(Outcome.DELIVERED) == 3
    assert ingestor.sender.batches_delivered == 3          # each report sent exactly once
    assert ingestor.run_pass().results == []
    assert ingestor.sender.batches_delivered == 3
    for path in good_reference_reports():
        assert_in_whisper(own_carbon, path, "bay")


def test_carbon_that_accepts_but_never_confirms_is_not_delivery(tmp_path):
    """A listener that reads but never closes (a hung relay): the report must stay."""
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    conns = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    directory = tmp_path / "bay"
    copy_reports(good_reference_reports()[:1], directory)
    sender = GraphiteSender(GraphiteAddress("127.0.0.1", server.getsockname()[1]), timeout=1)
    ingestor = Ingestor([ScannerSource("bay", directory)], IngestSettings(settle_seconds=0), sender)
    summary = ingestor.run_pass()
    server.close()
    assert summary.count(Outcome.UNDELIVERED) == 1 and "did not confirm" in summary.results[0].detail
    assert (directory / good_reference_reports()[0].name).exists()


def test_report_written_slowly_is_never_ingested_half_way(graphite, tmp_path, scanner_name):
    directory = tmp_path / scanner_name
    directory.mkdir()
    source = good_reference_reports()[-1]
    data = source.read_bytes()
    ingestor = make_ingestor(graphite, directory, scanner_name, settle=2.0)
    outcomes: list[tuple[float, Outcome]] = []
    stop = threading.Event()
    runner = threading.Thread(target=watch, kwargs=dict(
        ingestor=ingestor, poll_interval=0.2, retry_interval=0.2, stop=stop,
        on_pass=lambda s: outcomes.extend((time.monotonic(), r.outcome) for r in s.results)))
    runner.start()
    try:
        target = directory / source.name
        # cut at line ends (the dangerous places) and mid-line, ~4 s in total
        line_ends = [i + 1 for i, b in enumerate(data) if b == 10]
        cuts = sorted(set(line_ends[::7]) | {len(data) // 3, len(data) - 5, line_ends[-1] - 1})
        written = 0
        with open(target, "wb") as fh:
            for cut in cuts:
                fh.write(data[written:cut])
                fh.flush()
                written = cut
                time.sleep(0.25)
                assert not (directory / "ingested").exists(), f"ingested after {written} of {len(data)} bytes"
                assert not (directory / "failed").exists(), f"quarantined after {written} of {len(data)} bytes"
            fh.write(data[written:])
        finished = time.monotonic()
        deadline = finished + 20
        while not (directory / "ingested" / source.name).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(10)
    assert (directory / "ingested" / source.name).read_bytes() == data
    assert not (directory / "failed").exists()
    assert any(o is Outcome.WAITING for _, o in outcomes)
    assert all(t >= finished for t, o in outcomes if o is Outcome.DELIVERED)
    assert_in_whisper(graphite, source, scanner_name)


def test_reingest_is_idempotent_and_archive_never_overwrites(graphite, tmp_path, scanner_name):
    directory = tmp_path / scanner_name
    source = good_reference_reports()[0]
    copy_reports([source], directory)
    ingestor = make_ingestor(graphite, directory, scanner_name)
    assert ingestor.run_pass().count(Outcome.DELIVERED) == 1
    # the same report dropped again: delivered again (same values), archive keeps one copy
    copy_reports([source], directory)
    assert ingestor.run_pass().count(Outcome.DELIVERED) == 1
    assert sorted(os.listdir(directory / "ingested")) == [source.name]
    assert_in_whisper(graphite, source, scanner_name)
    # a different report under the same name is archived beside it, not over it
    other = good_reference_reports()[1].read_bytes()
    (directory / source.name).write_bytes(other)
    result = ingestor.run_pass().results[0]
    assert result.outcome is Outcome.DELIVERED
    stem = source.name[:-4]
    assert result.moved_to == directory / "ingested" / f"{stem}~1.txt"
    assert (directory / "ingested" / source.name).read_bytes() == source.read_bytes()
    assert (directory / "ingested" / f"{stem}~1.txt").read_bytes() == other


def test_odd_names_and_directories_never_stop_the_good_reports(graphite, tmp_path, scanner_name):
    directory = tmp_path / scanner_name
    good = good_reference_reports()[1]
    copy_reports([good], directory)
    (directory / "Stability_20180910T090910.txt").mkdir()             # a directory with a report name
    (directory / "Stability_20180910T090910.txt" / "x").write_text("x")
    (directory / "Stability_last_week.txt").write_text("whatever")     # bad name
    (directory / "notes.txt").write_text("not a report")
    (directory / "Stability_20180911T090910.txt.part").write_text("copy in progress")
    os.symlink("/nonexistent/target", directory / "Stability_20180912T090910.txt")   # dangling link
    summary = make_ingestor(graphite, directory, scanner_name).run_pass()
    by_name = {r.path.name: r.outcome for r in summary.results}
    assert by_name[good.name] is Outcome.DELIVERED
    assert by_name["Stability_last_week.txt"] is Outcome.QUARANTINED
    assert "file name" in (directory / "failed" / "Stability_last_week.txt.error").read_text()
    assert (directory / "Stability_20180910T090910.txt" / "x").exists()
    assert (directory / "notes.txt").exists() and (directory / "Stability_20180911T090910.txt.part").exists()
    assert_in_whisper(graphite, good, scanner_name)


def test_bad_report_waits_for_settle_before_quarantine(graphite, tmp_path, scanner_name):
    directory = tmp_path / scanner_name
    directory.mkdir()
    bad = directory / "Stability_20200101T000000.txt"
    bad.write_text("Stability configuration: 16 slices, 500 measurements, 32 channels\n\nStab")
    ingestor = make_ingestor(graphite, directory, scanner_name, settle=1.0)
    assert ingestor.run_pass().results[0].outcome is Outcome.WAITING
    time.sleep(0.6)
    with open(bad, "a") as fh:                      # still being written: the clock restarts
        fh.write("ility SI results:\n")
    assert ingestor.run_pass().results[0].outcome is Outcome.WAITING
    time.sleep(0.6)
    assert ingestor.run_pass().results[0].outcome is Outcome.WAITING
    time.sleep(0.6)
    result = ingestor.run_pass().results[0]
    assert result.outcome is Outcome.QUARANTINED
    assert (directory / "failed" / bad.name).exists() and not bad.exists()


def test_one_shot_pass_trusts_file_times_for_old_files(graphite, tmp_path, scanner_name):
    directory = tmp_path / scanner_name
    directory.mkdir()
    bad = directory / "Stability_20200101T000000.txt"
    bad.write_text("garbage\n")
    fresh = make_ingestor(graphite, directory, scanner_name, settle=30.0, trust_file_times=True)
    assert fresh.run_pass().results[0].outcome is Outcome.WAITING      # ctime is now
    tight = make_ingestor(graphite, directory, scanner_name, settle=0.5, trust_file_times=True)
    time.sleep(0.7)
    assert tight.run_pass().results[0].outcome is Outcome.QUARANTINED


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tokyo"])
def test_per_scanner_time_zone(graphite, tmp_path, scanner_name, tz):
    directory = tmp_path / scanner_name
    source = good_reference_reports()[0]
    copy_reports([source], directory)
    assert make_ingestor(graphite, directory, scanner_name, tz=tz).run_pass().count(Outcome.DELIVERED) == 1
    assert_in_whisper(graphite, source, scanner_name, tz)


class _CountingSender(GraphiteSender):
    """Counts connection attempts (deliver() opens one connection per call)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attempts = 0

    def deliver(self, payload):
        self.attempts += 1
        return super().deliver(payload)


def test_watch_does_not_wake_itself_and_retries_a_stopped_carbon_every_5_s(own_carbon, tmp_path):
    """While a report waits (one to settle, one for a stopped carbon) the watcher's own reads
    must not wake it: measured with a second inotify watch that counts every open."""
    from watchdog.events import FileOpenedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    directory = tmp_path / "bayW"
    good = good_reference_reports()[0]
    copy_reports([good], directory)
    settling = directory / "Stability_20200101T000000.txt"
    settling.write_text("Stability configuration: 16 slices, 500 measurements, 32 channels\n\nStab")
    own_carbon.stop_carbon()
    opens: dict[str, int] = {}

    class CountOpens(FileSystemEventHandler):
        def on_any_event(self, event):
            if isinstance(event, FileOpenedEvent) and not event.is_directory:
                name = os.path.basename(event.src_path)
                opens[name] = opens.get(name, 0) + 1

    counter = Observer()
    counter.schedule(CountOpens(), str(directory))
    counter.start()
    sender = _CountingSender(GraphiteAddress.parse(own_carbon.line_address), timeout=2)
    ingestor = Ingestor([ScannerSource("bayW", directory, "UTC")], IngestSettings(settle_seconds=30), sender)
    stop = threading.Event()
    runner = threading.Thread(target=watch, kwargs=dict(ingestor=ingestor, poll_interval=30, stop=stop))
    try:
        time.sleep(0.5)
        runner.start()
        time.sleep(10.2)
    finally:
        stop.set()
        runner.join(10)
        counter.stop()
        counter.join(5)
    print(f"in 10 s: {sender.attempts} connection attempts, opens {opens}")
    # passes at 0, 5 and 10 s: about 3 of each (before: a pass every ~0.3 s, 30+ of each)
    assert 2 <= sender.attempts <= 4, sender.attempts
    assert opens.get(good.name, 0) <= 4 and opens.get(settling.name, 0) <= 4, opens
    assert good.name in os.listdir(directory) and settling.name in os.listdir(directory)


def _report_named(directory: Path, when: datetime.datetime, source: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / when.strftime("Stability_%Y%m%dT%H%M%S.txt")
    path.write_bytes(source.read_bytes())
    return path


def test_scan_time_in_the_future_is_held_not_archived(graphite, tmp_path, scanner_name, caplog):
    """A scanner in Tokyo read in the wrong zone (UTC): its report is ~9 h in the future for
    carbon, which would discard it.  It is held with a message naming file, time and zone,
    nothing is sent or archived; read in the right zone it is delivered."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    directory = tmp_path / scanner_name
    tokyo_now = dt.datetime.now(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None, microsecond=0)
    scan = tokyo_now - dt.timedelta(minutes=10)
    report = _report_named(directory, scan, good_reference_reports()[0])
    ingestor = make_ingestor(graphite, directory, scanner_name, tz="UTC")
    with caplog.at_level("WARNING", logger="hops.stability"):
        for _ in range(2):
            result = ingestor.run_pass().results[0]
            assert result.outcome is Outcome.HELD and result.outcome.left_in_place
    assert report.exists() and not (directory / "ingested").exists()
    assert ingestor.sender.batches_delivered == 0
    warnings = [r.getMessage() for r in caplog.records if "held, not sent" in r.getMessage()]
    assert len(warnings) == 1                                   # once, not every pass
    message = warnings[0]
    assert str(report) in message and "in time zone UTC" in message
    assert f"scan time {scan:%Y-%m-%d %H:%M:%S} in time zone UTC" in message
    assert "ahead of this host's clock" in message
    expected, ts = expected_values(report, scanner_name, "UTC")
    assert not graphite.whisper_path(next(iter(expected))).exists()     # nothing sent
    # the right zone: delivered and in whisper
    fixed = make_ingestor(graphite, directory, scanner_name, tz="Asia/Tokyo")
    assert fixed.run_pass().results[0].outcome is Outcome.DELIVERED
    assert_in_whisper(graphite, directory / "ingested" / report.name, scanner_name, "Asia/Tokyo")


def test_a_held_report_is_sent_by_the_watcher_once_its_time_has_passed(graphite, tmp_path, scanner_name):
    import datetime as dt

    directory = tmp_path / scanner_name
    # 55 s old: inside the 60 s margin, so held for about 5 s
    when = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0) - dt.timedelta(seconds=55)
    report = _report_named(directory, when, good_reference_reports()[0])
    ingestor = make_ingestor(graphite, directory, scanner_name, tz="UTC")
    outcomes: list[tuple[float, Outcome]] = []
    stop = threading.Event()
    runner = threading.Thread(target=watch, kwargs=dict(
        ingestor=ingestor, poll_interval=60, stop=stop,
        on_pass=lambda s: outcomes.extend((time.time(), r.outcome) for r in s.results)))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (directory / "ingested" / report.name).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(10)
    assert outcomes[0][1] is Outcome.HELD
    delivered = [t for t, o in outcomes if o is Outcome.DELIVERED]
    due = when.replace(tzinfo=dt.timezone.utc).timestamp() + 60
    assert delivered and due <= delivered[0] < due + 5, (outcomes, due)   # woken when due, not at the 60 s poll
    assert_in_whisper(graphite, directory / "ingested" / report.name, scanner_name, "UTC")


def test_with_verify_whisper_a_report_is_archived_only_once_its_datapoints_are_in_whisper(own_carbon, tmp_path,
                                                                                          forgetful_carbon):
    """Carbon confirms a batch when it has read it, not when it has written it: a carbon
    SIGKILLed in between loses the points of an archived report (found by tests/system).
    With ``verify_whisper_dir`` the report is archived only after every datapoint is read
    back from whisper; otherwise it stays and is sent again."""
    directory = tmp_path / "bay"
    report = good_reference_reports()[0]
    copy_reports([report], directory)
    settings = IngestSettings(settle_seconds=0, verify_whisper_dir=own_carbon.whisper_dir, verify_timeout=2)
    ingestor = Ingestor([ScannerSource("bay", directory, "UTC")], settings,
                        GraphiteSender(GraphiteAddress("127.0.0.1", forgetful_carbon), timeout=5))
    summary = ingestor.run_pass()
    assert summary.count(Outcome.UNDELIVERED) == 1, summary.line()
    assert "not in whisper" in summary.results[0].detail
    assert (directory / report.name).exists() and not (directory / "ingested").exists()
    ingestor.sender = GraphiteSender(GraphiteAddress.parse(own_carbon.line_address), timeout=5)
    settings = IngestSettings(settle_seconds=0, verify_whisper_dir=own_carbon.whisper_dir, verify_timeout=30)
    ingestor.settings = settings
    summary = ingestor.run_pass()
    assert summary.count(Outcome.DELIVERED) == 1, summary.line()
    expected, timestamp = expected_values(report, "bay")
    found = wait_for_values(own_carbon, expected, timestamp, timeout=0.1)   # already there when archived
    assert found == expected


def test_verify_whisper_dir_from_the_config_file_and_the_command_line(tmp_path):
    from stability_collector.cli import _config_from, build_parser
    from stability_collector.config import build_config
    assert build_config({}).ingest_settings.verify_whisper_dir is None
    settings = build_config({"verify_whisper_dir": str(tmp_path), "timeout": 7}).ingest_settings
    assert (settings.verify_whisper_dir, settings.verify_timeout) == (tmp_path, 7)
    (tmp_path / "w").mkdir()
    args = build_parser().parse_args(["watch", str(tmp_path / "bay"), "--verify-whisper", str(tmp_path / "w")])
    assert _config_from(args).ingest_settings.verify_whisper_dir == tmp_path / "w"
    with pytest.raises(ConfigError, match="verify_whisper_dir: .* is not a directory"):   # else resent forever
        build_config({"verify_whisper_dir": str(tmp_path / "nowhere")}).ingest_settings.validated()
