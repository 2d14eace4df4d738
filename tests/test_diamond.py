"""A real diamond-next daemon with the shipped deploy/diamond/ collectors path and configs,
a real carbon-cache and a scanner directory."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import configobj
import pytest
from conftest import REPO, TRUNCATED, copy_reports, good_reference_reports, reference_reports, wait_for_values
from upstream_original import original_collector_names

from stability_collector.metrics import MetricLayout, report_metrics, resolve_timezone
from stability_collector.report import read_report

DIAMOND = shutil.which("diamond", path=os.path.dirname(sys.executable))
SHIPPED = REPO / "deploy" / "diamond"


class DiamondDaemon:
    """diamond -f with a config generated from the shipped examples."""

    def __init__(self, base: Path, carbon_port: int, directories: str, **collector_options: str):
        self.base = base
        (base / "collectors_conf").mkdir(parents=True)
        (base / "handlers_conf").mkdir()
        self.log = base / "diamond.out"          # stdout and stderr (the shipped config logs to stderr)
        self.stdout = base / "diamond.stdout"    # with log_stdout: Diamond's -l output alone
        # the shipped example, with this test's paths and ports substituted line by line
        # (its logging section is used as shipped: it must work without /var/log/diamond)
        text = (SHIPPED / "diamond.conf").read_text()
        replacements = {
            "pid_file": str(base / "diamond.pid"),
            "collectors_path": str(SHIPPED / "collectors") + "/",
            "collectors_config_path": str(base / "collectors_conf") + "/",
            "handlers_config_path": str(base / "handlers_conf") + "/",
            "port": str(carbon_port),
        }
        for key, value in replacements.items():
            text, count = re.subn(rf"^{key} = .*$", lambda _m: f"{key} = {value}", text, count=1, flags=re.M)
            assert count == 1, f"{key} not found in the shipped diamond.conf"
        if collector_options.pop("with_archive_handler", None):
            text = text.replace("handlers = diamond.handler.graphite.GraphiteHandler\n",
                                "handlers = diamond.handler.graphite.GraphiteHandler, "
                                "diamond.handler.archive.ArchiveHandler\n")
            (base / "handlers_conf" / "ArchiveHandler.conf").write_text(
                f"log_file = {base / 'archive.log'}\ndays = 1\n")
        (base / "diamond.conf").write_text(text)
        self.collector_conf = base / "collectors_conf" / "StabilityCollector.conf"
        self.write_collector_conf(**{"directories": directories, "interval": "2", "settle_seconds": "1",
                                     "timezone": "UTC", **collector_options})
        self.proc: subprocess.Popen | None = None

    def write_collector_conf(self, **options: str) -> None:
        """The shipped StabilityCollector.conf with ``options`` set."""
        collector = configobj.ConfigObj(str(SHIPPED / "StabilityCollector.conf"))
        collector.update(options)
        collector.filename = str(self.collector_conf)
        collector.write()

    def start(self, log_stdout: bool = False) -> "DiamondDaemon":
        """``log_stdout``: run with ``-l`` (Diamond's own logger also to stdout, kept apart)."""
        args = [DIAMOND, "-c", str(self.base / "diamond.conf"), "-f", "--skip-pidfile"] + (["-l"] if log_stdout else [])
        self.proc = subprocess.Popen(args, stdout=open(self.stdout if log_stdout else self.log, "wb"),
                                     stderr=open(self.log, "ab") if log_stdout else subprocess.STDOUT,
                                     start_new_session=True, cwd=self.base)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)    # multiprocessing children
        except ProcessLookupError:
            pass
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def diamond_factory(tmp_path):
    assert DIAMOND, "diamond-next is not installed (pip install -e '.[test]')"
    daemons = []

    def make(*args, **kwargs) -> DiamondDaemon:
        d = DiamondDaemon(tmp_path / f"diamond{len(daemons)}", *args, **kwargs)
        daemons.append(d)
        return d
    yield make
    for d in daemons:
        d.stop()


def wait_until(predicate, timeout: float, what: str, daemon: DiamondDaemon) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n--- diamond log ---\n{daemon.log_text()[-4000:]}")


def expected(path: Path, scanner: str):
    m = report_metrics(read_report(path), scanner, MetricLayout(), resolve_timezone("UTC"))
    return {p: float(t) for p, t in zip(m.paths, m.texts)}, m.timestamp


def archived(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "ingested").glob("*")) if (directory / "ingested").exists() else []


def test_diamond_ingests_reference_reports_into_whisper(graphite, diamond_factory, tmp_path):
    scanner_dir = tmp_path / "share" / "bayD"
    scanner_dir.mkdir(parents=True)
    daemon = diamond_factory(graphite.ports.line, str(scanner_dir), with_archive_handler=True,
                             publish_to_handlers="True").start()
    copy_reports(reference_reports(), scanner_dir)
    good = [p.name for p in good_reference_reports()]
    wait_until(lambda: archived(scanner_dir) == good and (scanner_dir / "failed" / TRUNCATED).exists(),
               60, "reports archived and the truncated one quarantined", daemon)
    for path in good_reference_reports():
        want, ts = expected(path, "bayD")
        assert wait_for_values(graphite, want, ts) == want
    error = (scanner_dir / "failed" / (TRUNCATED + ".error")).read_text()
    assert f"{TRUNCATED}:23: expected 'Stability SIfit results:', found the end of the file" in error
    assert sorted(os.listdir(scanner_dir)) == ["failed", "ingested"]
    # mirrored through Diamond's handlers with the scan time and every printed digit
    ts = expected(good_reference_reports()[-1], "bayD")[1]
    wait_until(lambda: (tmp_path / "diamond0" / "archive.log").exists() and
               f"hops.stability.bayD.32ch.fit.p2.01 0.000004 {ts}" in (tmp_path / "diamond0" / "archive.log").read_text(),
               30, "Diamond ArchiveHandler output", daemon)
    log = daemon.log_text()
    assert "Collector failed" not in log and "Traceback" not in log


def test_diamond_with_carbon_down_archives_nothing_then_delivers_each_once(own_carbon, diamond_factory, tmp_path):
    scanner_dir = tmp_path / "share" / "bayE"
    scanner_dir.mkdir(parents=True)
    own_carbon.stop_carbon()
    daemon = diamond_factory(own_carbon.ports.line, f"bayE={scanner_dir}", graphite_timeout="1").start()
    copy_reports(reference_reports(), scanner_dir)
    # the truncated report is quarantined regardless; the good ones must stay put
    wait_until(lambda: (scanner_dir / "failed" / TRUNCATED).exists(), 60, "quarantine", daemon)
    wait_until(lambda: "not delivered, will retry" in daemon.log_text(), 30, "a delivery attempt", daemon)
    time.sleep(5)                                   # several more intervals with carbon down
    assert archived(scanner_dir) == []
    assert sorted(p.name for p in scanner_dir.glob("*.txt")) == [p.name for p in good_reference_reports()]
    log = daemon.log_text()
    assert log.count("not delivered, will retry") == 1      # the outage is logged once, not every interval
    assert log.count("StabilityCollector pass:") == 1        # only the pass that quarantined
    own_carbon.start_carbon()
    good = [p.name for p in good_reference_reports()]
    wait_until(lambda: archived(scanner_dir) == good, 60, "archive after carbon came back", daemon)
    for path in good_reference_reports():
        want, ts = expected(path, "bayE")
        assert wait_for_values(own_carbon, want, ts) == want
    time.sleep(4)                                   # two more intervals: nothing is sent again
    log = daemon.log_text()
    for name in good:
        assert len(re.findall(rf"bayE/{re.escape(name)}: \d+ datapoints delivered", log)) == 1, log[-3000:]
    assert not list(scanner_dir.glob("*.txt"))


def test_bad_configuration_is_reported_once_and_does_not_kill_diamond(graphite, diamond_factory, tmp_path):
    daemon = diamond_factory(graphite.ports.line, str(tmp_path / "x"), timezone="Nowhere/City").start()
    wait_until(lambda: "StabilityCollector configuration error" in daemon.log_text(), 30, "config error", daemon)
    time.sleep(4)
    log = daemon.log_text()
    assert log.count("StabilityCollector configuration error: timezone: unknown IANA time zone") == 1
    assert daemon.proc.poll() is None


def test_every_option_is_documented_and_the_shipped_conf_mentions_it():
    from stability_collector.diamond_collector import StabilityCollector
    collector = StabilityCollector(config=None, handlers=[])
    ours = set(collector.get_default_config()) - {"enabled", "path_prefix", "instance_prefix", "path_suffix",
                                                  "ttl_multiplier", "byte_unit", "measure_collector_time",
                                                  "metrics_whitelist", "metrics_blacklist", "interval"}
    helps = collector.get_default_config_help()
    shipped = (SHIPPED / "StabilityCollector.conf").read_text()
    for option in ours:
        assert helps.get(option), option
        assert re.search(rf"^#? ?{option} =", shipped, re.M), f"{option} missing from StabilityCollector.conf"


def test_shim_is_not_named_like_the_package():
    shims = [p.stem for p in (SHIPPED / "collectors").glob("*.py")]
    assert shims == ["hops_stability"]


def test_collector_log_lines_show_with_diamond_l_and_the_shipped_logging_config(graphite, diamond_factory, tmp_path):
    """`diamond -f -l` prints Diamond's own logger on stdout: the collector's lines must be
    there (they went to 'hops.stability' before), and the shipped logging config must
    initialise on a machine without /var/log/diamond."""
    scanner_dir = tmp_path / "share" / "bayL"
    scanner_dir.mkdir(parents=True)
    daemon = diamond_factory(graphite.ports.line, str(scanner_dir)).start(log_stdout=True)
    copy_reports(good_reference_reports()[:1], scanner_dir)
    name = good_reference_reports()[0].name
    wait_until(lambda: archived(scanner_dir) == [name], 60, "the report archived", daemon)
    wait_until(lambda: f"bayL/{name}: 457 datapoints delivered" in daemon.stdout.read_text(), 10,
               "the collector's line on Diamond's -l output", daemon)
    assert "Error occurs when initialize logging" not in daemon.log_text()
    assert f"bayL/{name}: 457 datapoints delivered" in daemon.log_text()      # the shipped stderr handler


def test_edited_config_is_reloaded_when_diamond_main_pid_gets_sighup(graphite, diamond_factory, tmp_path):
    """Sites reload with `kill -HUP <diamond pid>` (or `systemctl reload`): that signal
    reaches Diamond's main process, not the collector's child process."""
    scanner_dir = tmp_path / "share" / "bayH"
    scanner_dir.mkdir(parents=True)
    daemon = diamond_factory(graphite.ports.line, str(scanner_dir), timezone="Nowhere/City").start()
    wait_until(lambda: "StabilityCollector configuration error" in daemon.log_text(), 30, "config error", daemon)
    copy_reports(good_reference_reports(), scanner_dir)
    daemon.write_collector_conf(directories=str(scanner_dir), interval="2", settle_seconds="1", timezone="UTC")
    os.kill(daemon.proc.pid, signal.SIGHUP)
    good = [p.name for p in good_reference_reports()]
    wait_until(lambda: archived(scanner_dir) == good, 30, "reports archived after the reload", daemon)
    for path in good_reference_reports():
        want, ts = expected(path, "bayH")
        assert wait_for_values(graphite, want, ts) == want
    assert daemon.proc.poll() is None
    assert daemon.log_text().count("StabilityCollector configuration error") == 1


def test_upstream_layout_through_diamond_reproduces_the_original_collectors_paths(graphite, diamond_factory,
                                                                                  tmp_path):
    """Same Diamond settings as when the original collector ran (path_prefix, hostname),
    layout = upstream and the old location as site: the whisper files are exactly the ones
    the original collector's names give (tests/data/original_collector_names.json), and
    graphite-web answers a query for them."""
    import json
    recorded = json.loads((REPO / "tests" / "data" / "original_collector_names.json").read_text())
    scanner_dir = tmp_path / "share" / "Bay1"
    scanner_dir.mkdir(parents=True)
    daemon = diamond_factory(graphite.ports.line, str(scanner_dir), layout="upstream",
                             site=recorded["location"].replace("/", "."),
                             path_prefix=recorded["diamond"]["path_prefix"],
                             hostname=recorded["diamond"]["hostname"]).start()
    copy_reports(good_reference_reports(), scanner_dir)
    good = [p.name for p in good_reference_reports()]
    wait_until(lambda: archived(scanner_dir) == good, 60, "reports archived", daemon)
    root = "servers.hopsvm.StabilityCollector.Harvard.Northwest.Bay1"
    for path in good_reference_reports():
        original = recorded["reports"][path.name]
        values = {p: float(v) for p, v in original_collector_names(path, "Harvard.Northwest.Bay1",
                                                                  "servers.hopsvm.StabilityCollector").items()}
        assert sorted(values) == original["paths"]
        assert wait_for_values(graphite, values, original["timestamps"][0]) == values
    # every table metric in whisper under the old root is one of the original's names
    in_whisper = {str(p.relative_to(graphite.whisper_dir))[:-4].replace("/", ".")
                  for p in (graphite.whisper_dir / root.replace(".", "/")).rglob("*.wsp")}
    originals = {p for r in recorded["reports"].values() for p in r["paths"]}
    assert {p for p in in_whisper if ".summary." not in p} == originals
    series = graphite.render_json(f"{root}.64.SNR.sdpct.1")
    assert series and 10.264 in [v for v, _ in series[0]["datapoints"]]
    assert "cannot verify carbon's storage schema" in daemon.log_text()     # outside 'hops.': said loudly
