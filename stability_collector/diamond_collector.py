"""Diamond adapter: ``StabilityCollector`` runs the HOPS ingest core inside Diamond.

Drop-in instructions are in the README ("Running it inside Diamond").  The collector is a thin
adapter: the parser, metric names, confirmed delivery, settle/quarantine and archive
rules are exactly those of ``hops-stability ingest`` (:mod:`stability_collector.ingest`).

**The delivery guarantee.**  Diamond's Graphite handler runs in another process and
silently trims its backlog while carbon is down, so "published" is not "delivered".  The
collector therefore delivers each report itself through the confirmed sender (one TCP
connection per report; carbon must read everything and close) to the Graphite that
Diamond's ``[[GraphiteHandler]]`` is configured for (or ``graphite_host`` /
``graphite_port``), and moves a report to ``ingested/`` only after that confirmation.
An unconfirmed report stays in place and is retried next interval.  With
``publish_to_handlers = True`` the datapoints are *also* published through Diamond's
handlers (``publish_metric(Metric(...))`` with the scan time as timestamp and enough
decimals for every printed digit), for sites that use other Diamond handlers too; carbon
then receives identical values twice, which is harmless.

**Bounded passes.**  Diamond kills a ``collect()`` that overruns its window with
SIGALRM.  A pass stops starting new reports before the window ends, and SIGALRM is
held back while one report is being delivered and moved, so a report is never
interrupted half-way; the rest is picked up next interval.

**Logging** goes to Diamond's collector logger (``self.log``, the ``diamond`` logger), so
the collector's lines appear wherever Diamond's do (``diamond -l`` included).

**Reloading.**  Diamond delivers SIGHUP to the process that gets it: the main PID (what
``kill -HUP $(cat diamond.pid)`` and most service units signal) only re-reads its own
config and leaves running collectors alone.  So the collector re-reads Diamond's
configuration at the start of every interval and rebuilds itself when its settings (or
the GraphiteHandler's host/port) changed: an edited config takes effect within one
interval, with or without a signal.

**Upstream names.**  With ``layout = upstream`` every path gets the prefix Diamond puts in
front of a collector's metrics (``diamond_prefix = auto``): ``<path_prefix>.<hostname>
[.<path_suffix>].StabilityCollector.``, exactly as the original collector's names got it.

Works with diamond-next 5.x and Python 3 ports of classic Diamond (same
``diamond.collector.Collector`` / ``diamond.metric.Metric`` API).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Iterator

try:  # pragma: no branch - Diamond is an optional dependency
    from diamond.collector import Collector as _DiamondCollector
    from diamond.metric import Metric as _DiamondMetric
except ImportError as _exc:  # pragma: no cover - exercised only without Diamond
    _IMPORT_ERROR: ImportError | None = _exc

    class _DiamondCollector:  # type: ignore[no-redef]
        """Stand-in so the module imports without Diamond (for documentation tools)."""

        def __init__(self, *args: object, **kwargs: object):
            raise ImportError(f"StabilityCollector needs Diamond (pip install diamond-next): {_IMPORT_ERROR}")

    _DiamondMetric = None  # type: ignore[assignment]
else:
    _IMPORT_ERROR = None

from .config import build_config, check_site
from .core.errors import ConfigError
from .core.graphite import GraphiteSender
from .core.values import parse_bool
from .ingest import DEFAULT_ARCHIVE_SUBDIR, DEFAULT_FAILED_SUBDIR, DEFAULT_SETTLE_SECONDS, Ingestor, Outcome
from .metrics import ReportMetrics

__all__ = ["StabilityCollector"]

_PROBE = "hops_probe"

_HELP = {
    "directories": "Comma list of scanner directories, DIR or NAME=DIR; the scanner name is the "
                   "directory's basename unless named",
    "archive_subdir": f"Sub-directory delivered reports move to (default {DEFAULT_ARCHIVE_SUBDIR})",
    "failed_subdir": f"Sub-directory unparsable reports move to, with a .error file (default {DEFAULT_FAILED_SUBDIR})",
    "timezone": "IANA time zone of the scan times in the file names (default: this host's zone)",
    "scanner_timezones": "Comma list NAME=ZONE for scanners in another zone than 'timezone'",
    "scanner_sites": "Comma list NAME=SITE: each scanner's site path for the 'upstream' layout "
                     "(the original collector's location with dots, e.g. bay1=Harvard.Northwest.Bay1)",
    "coil_map": "Comma list CHANNELS=NAME naming coils (default <C>ch, e.g. 32ch)",
    "layout": "'hops' (default: hops.stability.<scanner>.<coil>.<section>.<column>.<slice>) or "
              "'upstream' (the original HOPS collector's paths)",
    "prefix": "Metric prefix (default hops.stability)",
    "diamond_prefix": "Put Diamond's prefix <path_prefix>.<hostname>[.<path_suffix>].StabilityCollector in "
                      "front of every path, as the original collector's paths had it: auto (default: only "
                      "with layout = upstream), True or False",
    "storage_schemas": "Carbon's storage-schemas.conf: refuse to start if it would lose phantom data "
                       "(unset: a warning when the paths lie outside 'hops.')",
    "metric_template": "str.format template for table values (overrides the layout's)",
    "summary_template": "str.format template for the per-report summaries (overrides the layout's)",
    "site": "Site path for the 'upstream' layout, one scanner only (default <prefix>.<scanner>); "
            "see scanner_sites",
    "settle_seconds": f"A report that does not parse is quarantined only after it has been unchanged "
                      f"this long (default {DEFAULT_SETTLE_SECONDS:g})",
    "graphite_host": "Carbon host for confirmed delivery (default: Diamond's [[GraphiteHandler]] host)",
    "graphite_port": "Carbon plaintext port (default: Diamond's [[GraphiteHandler]] port, else 2003)",
    "graphite_timeout": "Seconds to wait for carbon's confirmation of one report (default 10)",
    "publish_to_handlers": "Also publish every datapoint through Diamond's handlers (default False)",
}


def _as_list(value: Any) -> list[str]:
    """Diamond's configobj gives a list for 'a, b' and a string for 'a'."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = str(value).split(",")
    return [i.strip() for i in items if i and i.strip()]


def _as_bool(value: Any, key: str = "setting") -> bool:
    try:
        return parse_bool(key, value)
    except ConfigError:
        return False            # Diamond's own convention: anything but a yes-word is off


def _decimals(text: str) -> int:
    """Decimals needed to print ``text`` exactly with ``%.Nf``."""
    if "e" in text or "E" in text:
        return 12
    _, dot, frac = text.partition(".")
    return len(frac) if dot else 0


@contextlib.contextmanager
def _sigalrm_held() -> Iterator[None]:
    """Hold back Diamond's SIGALRM (its collector timeout) for the duration of the block;
    a pending alarm fires right after it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StabilityCollector(_DiamondCollector):
    """Ingest MGH Stability reports from scanner directories into Graphite."""

    def get_default_config_help(self) -> dict[str, str]:
        config_help = super().get_default_config_help()
        config_help.update(_HELP)
        return config_help

    def get_default_config(self) -> dict[str, Any]:
        config = super().get_default_config()
        config.update({
            "directories": "",
            "archive_subdir": DEFAULT_ARCHIVE_SUBDIR,
            "failed_subdir": DEFAULT_FAILED_SUBDIR,
            "timezone": "",
            "scanner_timezones": "",
            "scanner_sites": "",
            "diamond_prefix": "auto",
            "storage_schemas": "",
            "coil_map": "",
            "layout": "hops",
            "prefix": "hops.stability",
            "metric_template": "",
            "summary_template": "",
            "site": "",
            "settle_seconds": DEFAULT_SETTLE_SECONDS,
            "graphite_host": "",
            "graphite_port": "",
            "graphite_timeout": 10,
            "publish_to_handlers": False,
            "interval": 60,
        })
        return config

    def process_config(self) -> None:
        super().process_config()
        self._ingestor: Ingestor | None = None     # rebuilt from the new config (also on SIGHUP)
        self._config_error: str | None = None
        self._config_seen = self._config_sources()

    def _config_sources(self) -> str | None:
        """This collector's settings (and the GraphiteHandler's) as Diamond's config files
        say now; compared every interval to notice an edited config."""
        configfile = getattr(self, "configfile", None)
        if not configfile:
            return None
        try:
            from diamond.utils.config import load_config
            full = load_config(configfile)
            collectors = full.get("collectors", {})
            settings = {"default": dict(collectors.get("collectorsDefault", {})),
                        "own": dict(collectors.get(self.name, {})),
                        "graphite": dict(full.get("handlers", {}).get("GraphiteHandler", {}))}
            return json.dumps(settings, sort_keys=True, default=str)
        except Exception as exc:  # a config file being edited right now: keep running as configured
            self.log.debug("StabilityCollector: cannot re-read %s: %s", configfile, exc)
            return getattr(self, "_config_seen", None)

    def _reload_if_changed(self) -> None:
        current = self._config_sources()
        if current is not None and current != self._config_seen:
            self.log.info("StabilityCollector: configuration changed, reloading")
            try:
                self.load_config()
            except Exception as exc:  # e.g. Diamond's own checks; wait for the next edit
                self._config_seen = current
                self._ingestor = None
                self._config_error = str(exc)
                self.log.error("StabilityCollector configuration error: %s (edit the config: it is re-read "
                               "every interval)", exc)

    # -- configuration ---------------------------------------------------------------
    def _diamond_graphite(self) -> tuple[str, int]:
        """Host and port of Diamond's own GraphiteHandler, from Diamond's config file."""
        host, port = "127.0.0.1", 2003
        configfile = getattr(self, "configfile", None)
        if not configfile or not os.path.exists(configfile):
            return host, port
        try:
            try:
                from diamond.utils.config import load_config  # diamond-next
                full = load_config(configfile)
            except ImportError:  # classic Diamond ports
                import configobj
                full = configobj.ConfigObj(configfile)
            section = full.get("handlers", {}).get("GraphiteHandler", {})
            host = str(section.get("host", host)) or host
            port = int(section.get("port", port))
        except Exception as exc:  # never let a config quirk kill the collector
            self.log.warning("cannot read GraphiteHandler settings from %s: %s", configfile, exc)
        return host, port

    def _diamond_root(self, layout: str) -> str:
        """What Diamond puts in front of this collector's metric names ("" when off)."""
        setting = str(self.config.get("diamond_prefix", "auto")).strip().lower()
        if setting == "auto":
            wanted = layout == "upstream"
        elif setting in ("1", "true", "yes", "y", "on", "t", "0", "false", "no", "n", "off", "f"):
            wanted = _as_bool(setting)
        else:
            raise ConfigError("diamond_prefix", f"expected auto, True or False, found {setting!r}")
        if not wanted:
            return ""
        return self.get_metric_path(_PROBE)[:-len(_PROBE)].rstrip(".")

    @staticmethod
    def _pairs(key: str, value: Any, what: str) -> dict[str, str]:
        pairs = {}
        for item in _as_list(value):
            name, sep, setting = item.partition("=")
            if not sep or not name.strip() or not setting.strip():
                raise ConfigError(key, f"expected NAME={what}, found {item!r}")
            pairs[name.strip()] = setting.strip()
        return pairs

    def _build_ingestor(self) -> Ingestor:
        cfg = self.config
        default_host, default_port = self._diamond_graphite()
        host = str(cfg.get("graphite_host") or default_host)
        port = str(cfg.get("graphite_port") or default_port)
        values = {
            "graphite": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "layout": str(cfg.get("layout") or "hops"),
            "prefix": str(cfg.get("prefix") or "hops.stability"),
            "metric_template": str(cfg.get("metric_template") or "") or None,
            "summary_template": str(cfg.get("summary_template") or "") or None,
            "coil_map": ",".join(_as_list(cfg.get("coil_map"))) or None,
            "site": str(cfg.get("site") or "") or None,
            "timezone": str(cfg.get("timezone") or "") or None,
            "archive_subdir": str(cfg.get("archive_subdir") or DEFAULT_ARCHIVE_SUBDIR),
            "failed_subdir": str(cfg.get("failed_subdir") or DEFAULT_FAILED_SUBDIR),
            "settle_seconds": cfg.get("settle_seconds", DEFAULT_SETTLE_SECONDS),
            "timeout": cfg.get("graphite_timeout", 10),
            "storage_schemas": str(cfg.get("storage_schemas") or "") or None,
        }
        config = build_config(values)
        directories = _as_list(cfg.get("directories"))
        if not directories:
            raise ConfigError("directories", "no scanner directories configured")
        config = config.with_directories(directories)
        zones = self._pairs("scanner_timezones", cfg.get("scanner_timezones"), "ZONE")
        sites = self._pairs("scanner_sites", cfg.get("scanner_sites"), "SITE")
        for key, given in (("scanner_timezones", zones), ("scanner_sites", sites)):
            unknown = set(given) - {s.name for s in config.scanners}
            if unknown:
                raise ConfigError(key, f"no scanner named {sorted(unknown)[0]!r}")
        scanners = tuple(dataclasses.replace(s, timezone=zones.get(s.name, s.timezone), site=sites.get(s.name, s.site))
                         for s in config.scanners)
        layout = dataclasses.replace(config.layout, root=self._diamond_root(values["layout"])).validated()
        config = dataclasses.replace(config, scanners=scanners, layout=layout)
        for scanner in scanners:
            if scanner.site is not None:
                check_site("scanner_sites", scanner.site)
        config.check_scanners_apart()
        for warning in config.check_storage_schemas():
            self.log.warning("StabilityCollector: %s", warning)
        sender = GraphiteSender(config.require_graphite(), timeout=config.timeout)
        publish = self._publish if _as_bool(cfg.get("publish_to_handlers", False)) else None
        ingestor = Ingestor(scanners, config.ingest_settings, sender, trust_file_times=False,
                            on_delivered=publish, logger=self.log)
        self.log.info("StabilityCollector: %d scanner director%s -> Graphite %s (confirmed delivery%s)",
                      len(scanners), "y" if len(scanners) == 1 else "ies", config.graphite,
                      ", mirrored to Diamond handlers" if publish else "")
        return ingestor

    # -- Diamond hooks ---------------------------------------------------------------
    def _publish(self, metrics: ReportMetrics) -> None:
        for path, text in zip(metrics.paths, metrics.texts):
            self.publish_metric(_DiamondMetric(path, float(text), timestamp=metrics.timestamp,
                                               precision=_decimals(text), metric_type="GAUGE"))

    def _pass_deadline(self) -> float:
        """``time.monotonic()`` by which to stop starting new reports: before Diamond's
        alarm, which fires ``max(interval - stagger, 1)`` s after the start of collect()."""
        try:
            interval = float(self.config.get("interval", 60))
        except (TypeError, ValueError):
            interval = 60.0
        left = max(interval - (time.time() % interval), 1.0) if interval > 0 else 1.0
        return time.monotonic() + max(0.5, left * 0.8 - 0.2)

    def collect(self) -> None:
        self._reload_if_changed()
        if getattr(self, "_ingestor", None) is None:
            if getattr(self, "_config_error", None) is not None:
                return                  # reported once; an edited config is picked up next interval
            try:
                self._ingestor = self._build_ingestor()
            except ConfigError as exc:
                self._config_error = str(exc)
                self.log.error("StabilityCollector configuration error: %s (edit the config: it is re-read "
                               "every interval)", exc)
                return
        try:
            summary = self._ingestor.run_pass(deadline=self._pass_deadline(), report_guard=_sigalrm_held)
        except Exception:  # one bad pass must never stop the collector process
            self.log.exception("StabilityCollector pass failed; retrying next interval")
            return
        if summary.count(Outcome.DELIVERED) or summary.count(Outcome.QUARANTINED):
            self.log.info("StabilityCollector pass: %s", summary.line())
