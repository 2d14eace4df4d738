"""Configuration of the stability ingester (CLI, watcher and Diamond collector).

Every setting has an embedded default; a TOML file (``--config``) and command-line flags
override it, flags last.  Validation happens at start-up and every error names the key::

    # hops-stability.toml
    graphite = "graphite.example.org:2003"
    layout = "hops"                    # or "upstream"
    prefix = "hops.stability"
    # metric_template = "{prefix}.{scanner}.{coil}.{section}.{column}.{slice}"
    # summary_template = "{prefix}.{scanner}.{coil}.summary.{name}"
    coil_map = { 20 = "head20", 48 = "headneck64" }
    timezone = "America/New_York"      # default for scanners without their own
    archive_subdir = "ingested"
    failed_subdir = "failed"
    settle_seconds = 30
    poll_interval = 30
    timeout = 15                       # seconds to wait for Graphite's confirmation

    [scanners.prisma1]
    directory = "/mnt/scanners/prisma1"
    timezone = "America/New_York"
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .delivery import GraphiteAddress
from .ingest import (DEFAULT_ARCHIVE_SUBDIR, DEFAULT_FAILED_SUBDIR, DEFAULT_SETTLE_SECONDS,
                     IngestSettings, ScannerSource, parse_source_spec)
from .metrics import ConfigError, MetricLayout, resolve_timezone

__all__ = ["StabilityConfig", "load_config_file"]

_TOP_KEYS = {
    "graphite", "layout", "prefix", "metric_template", "summary_template", "coil_map", "site",
    "timezone", "archive_subdir", "failed_subdir", "settle_seconds", "poll_interval", "timeout",
    "scanners",
}
_SCANNER_KEYS = {"directory", "timezone"}


@dataclass(frozen=True)
class StabilityConfig:
    graphite: GraphiteAddress | None = None
    layout: MetricLayout = field(default_factory=MetricLayout)
    timezone: str | None = None
    scanners: tuple[ScannerSource, ...] = ()
    archive_subdir: str = DEFAULT_ARCHIVE_SUBDIR
    failed_subdir: str = DEFAULT_FAILED_SUBDIR
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    poll_interval: float = 30.0
    timeout: float = 15.0

    @property
    def ingest_settings(self) -> IngestSettings:
        return IngestSettings(self.layout, self.archive_subdir, self.failed_subdir,
                              self.settle_seconds).validated()

    def with_directories(self, specs: list[str]) -> "StabilityConfig":
        """Replace the scanners by ``DIR`` / ``NAME=DIR`` specs (default time zone)."""
        sources = tuple(parse_source_spec(s, self.timezone) for s in specs)
        return replace(self, scanners=sources)

    def require_graphite(self) -> GraphiteAddress:
        if self.graphite is None:
            raise ConfigError("graphite", "no Graphite address: give --graphite HOST:PORT or set "
                              "'graphite' in the config file")
        return self.graphite


def _number(key: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, found {value!r}") from None
    if not value >= minimum:
        raise ConfigError(key, f"must be >= {minimum:g}, found {value!r}")
    return float(value)


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, found {value!r}")
    return value


def build_config(values: Mapping[str, Any]) -> StabilityConfig:
    """Validate a mapping of settings (from TOML and/or flags; ``None`` = unset)."""
    v = {k: val for k, val in values.items() if val is not None}
    unknown = set(v) - _TOP_KEYS
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown setting; known settings: {', '.join(sorted(_TOP_KEYS))}")
    graphite = GraphiteAddress.parse(_string("graphite", v["graphite"])) if "graphite" in v else None
    coil_map = v.get("coil_map")
    if coil_map is not None and not isinstance(coil_map, (str, Mapping)):
        raise ConfigError("coil_map", f"expected a table or 'C=NAME,...', found {coil_map!r}")
    layout = MetricLayout.from_options(
        layout=_string("layout", v.get("layout", "hops")),
        template=_string("metric_template", v["metric_template"]) if "metric_template" in v else None,
        summary_template=_string("summary_template", v["summary_template"]) if "summary_template" in v else None,
        prefix=_string("prefix", v["prefix"]) if "prefix" in v else None,
        coil_map=coil_map,
        site=_string("site", v["site"]) if "site" in v else None,
    )
    timezone = _string("timezone", v["timezone"]) if "timezone" in v else None
    resolve_timezone(timezone, "timezone")
    scanners = []
    table = v.get("scanners", {})
    if not isinstance(table, Mapping):
        raise ConfigError("scanners", "expected a table of [scanners.NAME] sections")
    for name, entry in table.items():
        key = f"scanners.{name}"
        if not isinstance(entry, Mapping):
            raise ConfigError(key, "expected a table with 'directory' (and optionally 'timezone')")
        extra = set(entry) - _SCANNER_KEYS
        if extra:
            raise ConfigError(f"{key}.{sorted(extra)[0]}", f"unknown setting; known: {', '.join(sorted(_SCANNER_KEYS))}")
        if "directory" not in entry:
            raise ConfigError(f"{key}.directory", "missing")
        tz = _string(f"{key}.timezone", entry["timezone"]) if "timezone" in entry else timezone
        resolve_timezone(tz, f"{key}.timezone")
        scanners.append(ScannerSource(name, Path(_string(f"{key}.directory", entry["directory"])).expanduser(), tz))
    config = StabilityConfig(
        graphite=graphite,
        layout=layout,
        timezone=timezone,
        scanners=tuple(scanners),
        archive_subdir=_string("archive_subdir", v.get("archive_subdir", DEFAULT_ARCHIVE_SUBDIR)),
        failed_subdir=_string("failed_subdir", v.get("failed_subdir", DEFAULT_FAILED_SUBDIR)),
        settle_seconds=_number("settle_seconds", v.get("settle_seconds", DEFAULT_SETTLE_SECONDS)),
        poll_interval=_number("poll_interval", v.get("poll_interval", 30.0), 0.1),
        timeout=_number("timeout", v.get("timeout", 15.0), 0.1),
    )
    config.ingest_settings  # validates sub-directory names
    return config


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Read a TOML config file into a plain mapping (validated later by
    :func:`build_config`).  Errors name the file and the problem."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
