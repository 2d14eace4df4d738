"""Turn a parsed report into Graphite datapoints.

Every datapoint is time-stamped with the **scan time** (the report's file name, read
as wall-clock time in the scanner's IANA time zone; default the host's zone), never the
time of ingest.

Default metric path (``--layout hops``)::

    hops.stability.<scanner>.<coil>.<section>.<column>.<slice>
    e.g. hops.stability.prisma1.32ch.snr.mean.01

* ``<section>``: ``si sifit snr ghost fit``
* ``<column>``: ``min max mean sd sdpct p2ppct`` (the ``fit`` section: ``p0 p1 p2 chisq``)
* ``<slice>``: two digits, ``01`` ... (more digits when a report has >= 100 slices)
* ``<coil>``: the channel count through the coil map (default ``<C>ch``, e.g. ``32ch``)

plus per-report summary metrics ``hops.stability.<scanner>.<coil>.summary.<name>``
(see :data:`SUMMARY_METRICS`).

The ``upstream`` layout reproduces the names of the original HOPS Diamond collector
(github.com/fasrc/mri_stability_diamondcollector, 2018-02 onwards),
``<site path>.<coil>.<Section>.<Column>.<slice unpadded>`` (for example
``Harvard.Northwest.Bay2.32.SNR.sdpct.1``): the column header with ``[%]`` written ``pct``
and every other non-word character removed (``sdpct P2Ppct p0 p1 p2``), and the original
coil map ``32=32, 48=64, 64=64``.  Through Diamond the original's names also carry
Diamond's prefix (``<path_prefix>.<hostname>[.<path_suffix>].StabilityCollector.``); the
layout's ``root`` holds such a prefix.  Templates are ``str.format`` strings over the
fields listed in :data:`TEMPLATE_FIELDS`.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import string
from dataclasses import dataclass, field
from typing import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .core.errors import ConfigError
from .core.graphite import sanitize_node
from .report import SECTION_COLUMNS, SECTION_NAMES, StabilityReport

__all__ = [
    "LAYOUTS",
    "SUMMARY_METRICS",
    "TEMPLATE_FIELDS",
    "MetricLayout",
    "ReportMetrics",
    "report_metrics",
    "scan_epoch",
    "resolve_timezone",
    "parse_coil_map",
    "sanitize_node",
    "original_column_node",
]


#: Graphite node spelling of each column header.
COLUMN_NODES: Mapping[str, str] = {
    "min": "min", "max": "max", "mean": "mean", "sd": "sd", "sd[%]": "sdpct",
    "P2P[%]": "p2ppct", "p[0]": "p0", "p[1]": "p1", "p[2]": "p2", "chisq": "chisq",
}

#: Fields a template may use.
TEMPLATE_FIELDS: Mapping[str, str] = {
    "prefix": "the configured prefix (default 'hops.stability')",
    "site": "the site path (default '<prefix>.<scanner>')",
    "scanner": "the scanner name (directory basename or NAME=DIR)",
    "coil": "the coil name from the coil map",
    "channels": "the channel count from the report",
    "section": "section in lower case: si sifit snr ghost fit",
    "Section": "section as printed: SI SIfit SNR ghost fit",
    "column": "column node: min max mean sd sdpct p2ppct p0 p1 p2 chisq",
    "Column": "column as the original HOPS collector wrote it: min max mean sd sdpct P2Ppct p0 p1 p2 chisq",
    "slice": "slice number, two digits (01)",
    "slice_raw": "slice number as printed (1)",
    "name": "summary metric name (summary template only)",
}

#: Per-report summaries (name -> description, unit).
SUMMARY_METRICS: Mapping[str, str] = {
    "snr_mean": "mean over slices of the SNR section's mean (SNR, unitless)",
    "snr_min": "lowest slice SNR mean (SNR, unitless)",
    "fluctuation_pct": "mean over slices of SIfit sd[%]: percent signal fluctuation after detrending (%)",
    "si_p2p_pct_max": "largest slice SI peak-to-peak (P2P[%], %)",
    "drift_pct": "signal drift over the run from the fit, mean over slices: "
                 "(p1*(M-1) + p2*(M-1)^2) / p0 * 100 (%)",
    "drift_pct_max": "largest absolute slice drift from the fit, signed (%)",
    "ghost_mean": "mean over slices of the ghost section's mean (ghost level, as printed)",
    "slices": "number of slices in the report",
    "measurements": "number of measurements (time points) in the run",
}


@dataclass(frozen=True)
class LayoutPreset:
    template: str
    summary_template: str
    coil_map: Mapping[int, str]


#: Named layouts.  ``hops`` is the default.
LAYOUTS: Mapping[str, LayoutPreset] = {
    "hops": LayoutPreset(
        "{prefix}.{scanner}.{coil}.{section}.{column}.{slice}",
        "{prefix}.{scanner}.{coil}.summary.{name}",
        {},
    ),
    "upstream": LayoutPreset(
        "{site}.{coil}.{Section}.{Column}.{slice_raw}",
        "{site}.{coil}.summary.{name}",
        {32: "32", 48: "64", 64: "64"},
    ),
}

DEFAULT_PREFIX = "hops.stability"
_PATH_OK = re.compile(r"[^\s.]+(\.[^\s.]+)*")


def original_column_node(header: str) -> str:
    """A column header as the original HOPS collector made it a metric node: ``[%]``
    becomes ``pct``, then every non-word character is removed (``sd[%]`` -> ``sdpct``,
    ``P2P[%]`` -> ``P2Ppct``, ``p[0]`` -> ``p0``)."""
    return re.sub(r"\W+", "", header.replace("[%]", "pct"))


def _sanitize_path(text: str) -> str:
    return ".".join(sanitize_node(part) for part in text.split(".") if part.strip())


def parse_coil_map(spec: str | Mapping[object, object] | None, key: str = "coil_map") -> dict[int, str]:
    """Parse ``"32=head32,48=headneck64"`` (or a mapping) into ``{channels: coil}``."""
    if spec is None or spec == "":
        return {}
    items: list[tuple[object, object]]
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(key, f"expected CHANNELS=NAME pairs separated by commas, found {part.strip()!r}")
            k, v = part.split("=", 1)
            items.append((k, v))
    result = {}
    for k, v in items:
        try:
            channels = int(str(k).strip())
        except ValueError:
            raise ConfigError(key, f"channel count must be an integer, found {k!r}") from None
        name = sanitize_node(str(v))
        if not str(v).strip():
            raise ConfigError(key, f"empty coil name for {channels} channels")
        result[channels] = name
    return result


def resolve_timezone(name: str | None, key: str = "timezone") -> _dt.tzinfo | None:
    """An IANA zone (``Europe/Berlin``), or ``None`` for the host's local zone."""
    if name is None or name == "" or name == "local":
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(key, f"unknown IANA time zone {name!r}") from None


def scan_epoch(scan_time: _dt.datetime, tz: _dt.tzinfo | None) -> int:
    """Seconds since the epoch of a naive wall-clock ``scan_time`` in zone ``tz``
    (``None``: the host's zone).  Ambiguous times at a DST change take the first
    occurrence."""
    if tz is None:
        return int(scan_time.timestamp())
    return int(scan_time.replace(tzinfo=tz).timestamp())


@dataclass(frozen=True)
class MetricLayout:
    """How report values are named.  Validate with :meth:`validated` at start-up."""

    template: str = LAYOUTS["hops"].template
    summary_template: str = LAYOUTS["hops"].summary_template
    prefix: str = DEFAULT_PREFIX
    coil_map: Mapping[int, str] = field(default_factory=dict)
    site: str | None = None
    #: Put in front of every path (the Diamond collector's ``diamond_prefix``); "" = nothing.
    root: str = ""

    @classmethod
    def from_options(cls, layout: str = "hops", template: str | None = None,
                     summary_template: str | None = None, prefix: str | None = None,
                     coil_map: str | Mapping[object, object] | None = None,
                     site: str | None = None) -> "MetricLayout":
        """Build and validate a layout from user options (``layout`` names a preset
        whose templates and coil map apply unless given explicitly)."""
        if layout not in LAYOUTS:
            raise ConfigError("layout", f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        preset = LAYOUTS[layout]
        cmap = dict(preset.coil_map)
        cmap.update(parse_coil_map(coil_map))
        return cls(
            template=template or preset.template,
            summary_template=summary_template or preset.summary_template,
            prefix=DEFAULT_PREFIX if prefix is None else prefix,
            coil_map=cmap,
            site=site,
        ).validated()

    def validated(self) -> "MetricLayout":
        if self.prefix and not _PATH_OK.fullmatch(self.prefix):
            raise ConfigError("prefix", f"not a Graphite path: {self.prefix!r}")
        if self.site is not None and not _PATH_OK.fullmatch(self.site):
            raise ConfigError("site", f"not a Graphite path: {self.site!r}")
        if self.root and not _PATH_OK.fullmatch(self.root):
            raise ConfigError("diamond_prefix", f"not a Graphite path: {self.root!r}")
        self._check_template("metric_template", self.template,
                             required=("section", "column", "slice"), alt={"section": "Section",
                                                                          "column": "Column",
                                                                          "slice": "slice_raw"})
        self._check_template("summary_template", self.summary_template, required=("name",), alt={})
        return self

    def _check_template(self, key: str, template: str, required: tuple[str, ...],
                        alt: Mapping[str, str]) -> None:
        try:
            used = {fname for _, fname, _, _ in string.Formatter().parse(template) if fname is not None}
        except ValueError as exc:
            raise ConfigError(key, f"bad template {template!r}: {exc}") from None
        if "column_raw" in used:
            raise ConfigError(key, f"{{column_raw}} in {template!r} gives names such as 'sd[%]' that "
                              "graphite-web cannot query; use {Column} (sdpct, P2Ppct, p0: the original "
                              "HOPS collector's names) or {column} (sdpct, p2ppct, p0)")
        unknown = used - set(TEMPLATE_FIELDS)
        if unknown:
            raise ConfigError(key, f"unknown field(s) {', '.join(sorted(unknown))} in {template!r}; "
                              f"known: {', '.join(TEMPLATE_FIELDS)}")
        for req in required:
            if req not in used and alt.get(req) not in used:
                raise ConfigError(key, f"template {template!r} must contain {{{req}}} "
                                  "or values would overwrite each other")
        sample = template.format(**{k: "x" for k in TEMPLATE_FIELDS})
        if not _PATH_OK.fullmatch(sample):
            raise ConfigError(key, f"template {template!r} does not give a Graphite path "
                              "(empty node, space or leading/trailing dot)")

    def coil_for(self, channels: int) -> str:
        return self.coil_map.get(channels) or f"{channels}ch"

    def _base_fields(self, scanner: str, channels: int, site: str | None) -> dict[str, str]:
        scanner_node = sanitize_node(scanner)
        prefix = _sanitize_path(self.prefix) if self.prefix else ""
        site = site or self.site
        site = _sanitize_path(site) if site else ".".join(p for p in (prefix, scanner_node) if p)
        return {"prefix": prefix, "site": site, "scanner": scanner_node,
                "coil": sanitize_node(self.coil_for(channels)), "channels": str(channels)}

    def _rooted(self, path: str) -> str:
        return _collapse(f"{_sanitize_path(self.root)}.{path}" if self.root else path)

    def value_paths(self, scanner: str, channels: int, slices: int, site: str | None = None) -> list[str]:
        """Paths of every table value, in report order (section, slice, column).
        ``site`` overrides the layout's site path (a scanner's own ``site``)."""
        key = (scanner, channels, slices, site)
        cached = _PATH_CACHE.get((self, key))
        if cached is not None:
            return cached
        base = self._base_fields(scanner, channels, site)
        width = max(2, len(str(slices)))
        paths = []
        for section in SECTION_NAMES:
            for slice_no in range(1, slices + 1):
                for column in SECTION_COLUMNS[section]:
                    paths.append(self._rooted(self.template.format(
                        section=section.lower(), Section=section, column=COLUMN_NODES[column],
                        Column=original_column_node(column), slice=str(slice_no).zfill(width),
                        slice_raw=str(slice_no), name="", **base)))
        if len(_PATH_CACHE) > 256:
            _PATH_CACHE.clear()
        _PATH_CACHE[(self, key)] = paths
        return paths

    def summary_path(self, scanner: str, channels: int, name: str, site: str | None = None) -> str:
        key = (self, (scanner, channels, name, site))
        cached = _SUMMARY_CACHE.get(key)
        if cached is None:
            if len(_SUMMARY_CACHE) > 4096:
                _SUMMARY_CACHE.clear()
            cached = _SUMMARY_CACHE[key] = self._summary_path(scanner, channels, name, site)
        return cached

    def _summary_path(self, scanner: str, channels: int, name: str, site: str | None) -> str:
        base = self._base_fields(scanner, channels, site)
        return self._rooted(self.summary_template.format(
            section="summary", Section="summary", column=name, Column=name, slice="",
            slice_raw="", name=name, **base))

    def sample_paths(self, scanner: str, site: str | None = None) -> list[str]:
        """Every path of a 16-slice report for each coil of the coil map (and 32
        channels): what a storage-schema check has to cover."""
        paths: list[str] = []
        for channels in sorted({32, *self.coil_map}):
            paths += self.value_paths(scanner, channels, 16, site)
            paths += [self.summary_path(scanner, channels, name, site) for name in SUMMARY_METRICS]
        return paths

    def __hash__(self) -> int:  # coil_map is a dict; hash by content
        return hash((self.template, self.summary_template, self.prefix,
                     tuple(sorted(self.coil_map.items())), self.site, self.root))


_PATH_CACHE: dict[tuple[MetricLayout, tuple[str, int, int, str | None]], list[str]] = {}
_SUMMARY_CACHE: dict[tuple[MetricLayout, tuple[str, int, str, str | None]], str] = {}


def _collapse(path: str) -> str:
    """Drop empty nodes (e.g. an empty prefix) so the path stays valid."""
    if ".." in path or path.startswith(".") or path.endswith("."):
        return ".".join(p for p in path.split(".") if p)
    return path


def _fmt(value: float) -> str:
    return repr(round(value, 9)) if math.isfinite(value) else "0"


def summaries(report: StabilityReport) -> dict[str, float]:
    """The per-report summary values (see :data:`SUMMARY_METRICS`)."""
    snr_mean = report.section("SNR").column("mean")
    fluct = report.section("SIfit").column("sd[%]")
    p2p = report.section("SI").column("P2P[%]")
    ghost = report.section("ghost").column("mean")
    fit = report.section("fit")
    last_t = report.measurements - 1
    drifts = []
    for p0, p1, p2, _chisq in fit.values:
        if p0 != 0.0:
            drifts.append((p1 * last_t + p2 * last_t * last_t) / p0 * 100.0)
    n = report.slices
    result = {
        "snr_mean": sum(snr_mean) / n,
        "snr_min": min(snr_mean),
        "fluctuation_pct": sum(fluct) / n,
        "si_p2p_pct_max": max(p2p),
        "ghost_mean": sum(ghost) / n,
        "slices": float(report.slices),
        "measurements": float(report.measurements),
    }
    if drifts:
        result["drift_pct"] = sum(drifts) / len(drifts)
        result["drift_pct_max"] = max(drifts, key=abs)
    return result


@dataclass(frozen=True)
class ReportMetrics:
    """All datapoints of one report: ``paths[i]`` has value ``texts[i]`` (exact text)
    at ``timestamp`` (epoch seconds of the scan)."""

    report: StabilityReport
    scanner: str
    timestamp: int
    paths: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def graphite_lines(self) -> str:
        """Graphite plaintext protocol: ``path value epoch`` per line."""
        suffix = f" {self.timestamp}\n"
        return "".join([p + " " + t + suffix for p, t in zip(self.paths, self.texts)])

    def as_json(self) -> str:
        return json.dumps({
            "source": self.report.source,
            "scanner": self.scanner,
            "scan_time": self.report.scan_time.isoformat(),
            "timestamp": self.timestamp,
            "slices": self.report.slices,
            "measurements": self.report.measurements,
            "channels": self.report.channels,
            "datapoints": [{"path": p, "value": float(t), "text": t} for p, t in zip(self.paths, self.texts)],
        }, indent=1)


def report_metrics(report: StabilityReport, scanner: str, layout: MetricLayout,
                   tz: _dt.tzinfo | None = None, site: str | None = None) -> ReportMetrics:
    """Name every value of ``report`` for ``scanner`` (``site``: the scanner's own site
    path, overriding the layout's) and time-stamp it with the scan time."""
    timestamp = scan_epoch(report.scan_time, tz)
    paths = list(layout.value_paths(scanner, report.channels, report.slices, site))
    texts: list[str] = []
    for section in SECTION_NAMES:
        for row in report.sections[section].texts:
            texts.extend(row)
    for name, value in summaries(report).items():
        paths.append(layout.summary_path(scanner, report.channels, name, site))
        texts.append(_fmt(value))
    return ReportMetrics(report, scanner, timestamp, paths, texts)
