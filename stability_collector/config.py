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
    # storage_schemas = "/etc/carbon/storage-schemas.conf"   # carbon's, to verify it at start-up

    [scanners.prisma1]
    directory = "/mnt/scanners/prisma1"
    timezone = "America/New_York"
    # site = "Harvard.Northwest.Bay1"  # this scanner's site path (layout "upstream")

Every command resolves a scanner the same way (:meth:`StabilityConfig.scanner_for`): a
report directory (or its ``ingested``/``failed`` sub-directory) that is a configured
scanner's ``directory`` gets that scanner's name, zone and site; anything else is named
after its directory and read in the default ``timezone``.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .core.errors import ConfigError
from .core.graphite import GraphiteAddress
from .core.values import parse_number, parse_string
from .ingest import (
    DEFAULT_ARCHIVE_SUBDIR,
    DEFAULT_FAILED_SUBDIR,
    DEFAULT_SETTLE_SECONDS,
    IngestSettings,
    ScannerSource,
    split_source_spec,
)
from .localgraphite import graphite_conf_text
from .metrics import MetricLayout, resolve_timezone
from .schemas import check_schemas, load_schemas, parse_schemas, schema_entries, schema_for

__all__ = ["StabilityConfig", "load_config_file"]

_TOP_KEYS = {
    "graphite", "layout", "prefix", "metric_template", "summary_template", "coil_map", "site",
    "timezone", "archive_subdir", "failed_subdir", "settle_seconds", "poll_interval", "timeout",
    "storage_schemas", "scanners", "verify_whisper_dir",
}
_SCANNER_KEYS = {"directory", "timezone", "site"}
#: The shipped schema section HOPS' default names fall under.
_SHIPPED_SECTION = "hops_stability"


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
    storage_schemas: Path | None = None
    verify_whisper_dir: Path | None = None

    @property
    def ingest_settings(self) -> IngestSettings:
        return IngestSettings(self.layout, self.archive_subdir, self.failed_subdir,
                              self.settle_seconds, self.verify_whisper_dir, self.timeout).validated()

    def with_directories(self, specs: list[str]) -> "StabilityConfig":
        """Replace the scanners by ``DIR`` / ``NAME=DIR`` specs.  A ``DIR`` that is a
        configured scanner's directory keeps that scanner's name (unless ``NAME=`` gives
        another), zone and site; any other gets the default zone."""
        sources = []
        for spec in specs:
            name, directory = split_source_spec(spec)
            sources.append(self.scanner_for(directory, name))
        return replace(self, scanners=tuple(sources))

    def scanner_for(self, directory: Path, name: str | None = None) -> ScannerSource:
        """The scanner whose reports are in ``directory`` (a scanner directory or its
        archive/failed sub-directory), resolved as ``ingest`` and ``watch`` do: ``name``
        (``--scanner``, ``NAME=DIR``) if given, a configured scanner with that name or
        directory (its zone and site), else the directory's basename in the default zone."""
        directory = Path(directory).expanduser()
        scanner_dir = directory
        resolved = directory.resolve()
        if resolved.name in (self.archive_subdir, self.failed_subdir) and resolved.parent != resolved:
            scanner_dir = resolved.parent
        by_name = next((s for s in self.scanners if s.name == name), None) if name else None
        by_directory = next((s for s in self.scanners if _same_directory(s.directory, scanner_dir)), None)
        configured = by_name or by_directory
        if configured is not None:
            return replace(configured, name=name or configured.name, directory=scanner_dir)
        return ScannerSource(name or scanner_dir.resolve().name or str(scanner_dir), scanner_dir, self.timezone)

    def metric_paths(self) -> dict[str, list[str]]:
        """Every path each scanner can produce (a 16-slice report per known coil)."""
        return {s.name: self.layout.sample_paths(s.name, s.site) for s in self.scanners}

    def check_scanners_apart(self) -> None:
        """Refuse a configuration in which two scanners would write the same metrics."""
        names = [s.name for s in self.scanners]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError("directories", f"two scanner directories are both named {twice[0]!r} and would "
                              "write the same metrics: name them (NAME=DIR, or [scanners.NAME] sections)")
        seen: dict[str, str] = {}
        for scanner, paths in self.metric_paths().items():
            for path in paths:
                other = seen.setdefault(path, scanner)
                if other != scanner:
                    key = "site" if "{site}" in self.layout.template else "metric_template"
                    raise ConfigError(key, f"scanners {other!r} and {scanner!r} would write the same metrics "
                                      f"(e.g. {path}) and overwrite each other's values: give each scanner its "
                                      "own site ([scanners.NAME] site = ...) or use {scanner} in the template")

    def check_storage_schemas(self) -> list[str]:
        """Verify carbon's storage schema for every metric path (see
        :mod:`stability_collector.schemas`).  Raises :class:`ConfigError` (key
        ``storage_schemas``) when ``storage_schemas`` names a file whose schema would lose
        phantom data; returns warnings, among them a loud one when the paths lie outside
        the shipped ``hops.`` schema and no ``storage_schemas`` file is given to check."""
        paths = self.metric_paths()
        if not paths:
            return []
        entries = schema_entries(paths)
        if self.storage_schemas is None:
            shipped = parse_schemas(graphite_conf_text("storage-schemas.conf"))
            outside = [p for ps in paths.values() for p in ps if schema_for(shipped, p).name != _SHIPPED_SECTION]
            if not outside:
                return []
            covered = {schema_for(shipped, p).name for p in outside} - {"default"}
            shipped_note = (f" (the shipped storage-schemas.conf covers them in [{sorted(covered)[0]}]: make sure "
                            "carbon uses it)" if len(covered) == 1 and schema_for(shipped, outside[0]).problem()
                            is None else "")
            return [f"cannot verify carbon's storage schema for these metrics (e.g. {outside[0]}): they lie "
                    f"outside 'hops.'{shipped_note}. Unless carbon's storage-schemas.conf has this section "
                    "before any other that matches them, carbon keeps them at its default resolution (two "
                    "scans on one day overwrite each other, old scans are dropped):\n" + entries +
                    "Set 'storage_schemas' (--storage-schemas) to carbon's storage-schemas.conf to have it "
                    "checked at start-up (hops-stability schema prints this section)."]
        result = check_schemas(load_schemas(self.storage_schemas), paths, str(self.storage_schemas))
        if result.errors:
            raise ConfigError("storage_schemas", "\n".join(result.errors) + "\nAdd this section before them "
                              "(and restart carbon; existing whisper files keep their old schema, see "
                              "whisper-resize):\n" + entries)
        return result.warnings

    def require_graphite(self) -> GraphiteAddress:
        if self.graphite is None:
            raise ConfigError("graphite", "no Graphite address: give --graphite HOST:PORT or set "
                              "'graphite' in the config file")
        return self.graphite


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check_site(key: str, site: str) -> None:
    """Validate a site path; the error names ``key``."""
    try:
        MetricLayout(site=site).validated()
    except ConfigError as exc:
        raise ConfigError(key, str(exc).partition(": ")[2]) from None


def build_config(values: Mapping[str, Any]) -> StabilityConfig:
    """Validate a mapping of settings (from TOML and/or flags; ``None`` = unset)."""
    v = {k: val for k, val in values.items() if val is not None}
    unknown = set(v) - _TOP_KEYS
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown setting; known settings: {', '.join(sorted(_TOP_KEYS))}")
    graphite = GraphiteAddress.parse(parse_string("graphite", v["graphite"])) if "graphite" in v else None
    coil_map = v.get("coil_map")
    if coil_map is not None and not isinstance(coil_map, (str, Mapping)):
        raise ConfigError("coil_map", f"expected a table or 'C=NAME,...', found {coil_map!r}")
    layout = MetricLayout.from_options(
        layout=parse_string("layout", v.get("layout", "hops")),
        template=parse_string("metric_template", v["metric_template"]) if "metric_template" in v else None,
        summary_template=parse_string("summary_template", v["summary_template"]) if "summary_template" in v else None,
        prefix=parse_string("prefix", v["prefix"]) if "prefix" in v else None,
        coil_map=coil_map,
        site=parse_string("site", v["site"]) if "site" in v else None,
    )
    timezone = parse_string("timezone", v["timezone"]) if "timezone" in v else None
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
        tz = parse_string(f"{key}.timezone", entry["timezone"]) if "timezone" in entry else timezone
        resolve_timezone(tz, f"{key}.timezone")
        site = parse_string(f"{key}.site", entry["site"]) if "site" in entry else None
        if site is not None:
            check_site(f"{key}.site", site)
        scanners.append(ScannerSource(name, Path(parse_string(f"{key}.directory", entry["directory"])).expanduser(),
                                      tz, site))
    config = StabilityConfig(
        graphite=graphite,
        layout=layout,
        timezone=timezone,
        scanners=tuple(scanners),
        archive_subdir=parse_string("archive_subdir", v.get("archive_subdir", DEFAULT_ARCHIVE_SUBDIR)),
        failed_subdir=parse_string("failed_subdir", v.get("failed_subdir", DEFAULT_FAILED_SUBDIR)),
        settle_seconds=parse_number("settle_seconds", v.get("settle_seconds", DEFAULT_SETTLE_SECONDS)),
        poll_interval=parse_number("poll_interval", v.get("poll_interval", 30.0), 0.1),
        timeout=parse_number("timeout", v.get("timeout", 15.0), 0.1),
        storage_schemas=Path(parse_string("storage_schemas", v["storage_schemas"])).expanduser()
        if v.get("storage_schemas") else None,
        verify_whisper_dir=Path(parse_string("verify_whisper_dir", v["verify_whisper_dir"])).expanduser()
        if v.get("verify_whisper_dir") else None,
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
