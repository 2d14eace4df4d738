"""Check that carbon keeps the stability metrics at a resolution that suits them.

Carbon picks a whisper schema for a new metric from ``storage-schemas.conf``: the first
section whose ``pattern`` (a regular expression, searched in the path) matches, else its
built-in fallback of one point a minute for 7 days.  Phantom data is a few reports a week,
back-filled from years ago, so a schema that rolls up to one point a day merges two scans
on one day (the later overwrites the earlier), and one that does not reach back far enough
drops old scans.  Carbon says nothing in either case.

The shipped schemas (``stability_collector/data/graphite/storage-schemas.conf``) keep
``hops.`` and every Diamond ``StabilityCollector`` path at 1 hour for 30 years.  A layout
whose paths start elsewhere (``layout = upstream`` with a ``site``, a custom ``prefix`` or
template) needs its own entry: :func:`schema_entries` writes it, :func:`check_schemas`
verifies a real ``storage-schemas.conf`` against every path the layout can produce.

A schema is *fit* for phantom data when no archive is coarser than one hour (two scans on
one day stay apart at any age).  It should also reach back at least
:data:`RECOMMENDED_YEARS` years (older scans are dropped); that is a warning only.
"""
from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .core.errors import ConfigError

__all__ = ["Archive", "SchemaEntry", "parse_retentions", "parse_schemas", "load_schemas", "schema_for",
           "check_schemas", "schema_entries", "MAX_SECONDS_PER_POINT", "RECOMMENDED_YEARS", "HOPS_RETENTIONS"]

#: No archive may be coarser than this (seconds per point).
MAX_SECONDS_PER_POINT = 3600
#: A schema that keeps less than this many years gets a warning.
RECOMMENDED_YEARS = 10
#: Retentions of the entries HOPS ships and generates.
HOPS_RETENTIONS = "1h:30y"

_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 7 * 86400, "years": 365 * 86400}
_YEAR = 365 * 86400


def _unit_seconds(unit: str, text: str) -> int:
    for name, seconds in _UNITS.items():       # carbon: the first unit name the text abbreviates
        if name.startswith(unit):
            return seconds
    raise ValueError(f"unknown time unit {unit!r} in {text!r}")


@dataclass(frozen=True)
class Archive:
    seconds_per_point: int
    points: int

    @property
    def retention(self) -> int:
        return self.seconds_per_point * self.points

    def __str__(self) -> str:
        return f"{_duration(self.seconds_per_point)}:{_duration(self.retention)}"


def _duration(seconds: int) -> str:
    for unit, size in (("y", _YEAR), ("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_retentions(text: str) -> tuple[Archive, ...]:
    """Carbon's ``retentions`` syntax: ``60s:7d,1h:30y`` or ``60:10080`` (seconds:points)."""
    archives = []
    for part in text.split(","):
        precision, sep, points = part.strip().partition(":")
        if not sep:
            raise ValueError(f"expected PRECISION:RETENTION, found {part.strip()!r}")
        m = re.fullmatch(r"(\d+)([a-z]*)", precision)
        if not m:
            raise ValueError(f"invalid precision {precision!r}")
        step = int(m.group(1)) * (_unit_seconds(m.group(2), part) if m.group(2) else 1)
        m = re.fullmatch(r"(\d+)([a-z]*)", points)
        if not m or step <= 0:
            raise ValueError(f"invalid retention {points!r}")
        count = int(m.group(1)) if not m.group(2) else int(m.group(1)) * _unit_seconds(m.group(2), part) // step
        archives.append(Archive(step, count))
    return tuple(archives)


@dataclass(frozen=True)
class SchemaEntry:
    """One section of storage-schemas.conf (``pattern`` None: carbon's built-in fallback)."""

    name: str
    pattern: str | None
    archives: tuple[Archive, ...]

    def matches(self, path: str) -> bool:
        return self.pattern is None or re.search(self.pattern, path) is not None

    @property
    def retentions(self) -> str:
        return ",".join(str(a) for a in self.archives)

    def problem(self) -> str | None:
        """Why this schema loses phantom data (``None``: it does not)."""
        coarse = [a for a in self.archives if a.seconds_per_point > MAX_SECONDS_PER_POINT]
        if coarse:
            finer = [a for a in self.archives if a.seconds_per_point <= MAX_SECONDS_PER_POINT]
            step = _duration(coarse[0].seconds_per_point)
            older = f"of scans older than {_duration(max(a.retention for a in finer))} " if finer else ""
            return (f"it keeps one point per {step} {older}(two scans on one day overwrite each other; "
                    f"HOPS needs 1 hour or finer at every age)")
        return None

    def warning(self) -> str | None:
        reach = max(a.retention for a in self.archives)
        if reach < RECOMMENDED_YEARS * _YEAR:
            return f"it keeps {_duration(reach)}: carbon drops scans older than that without a word"
        return None

    def describe(self) -> str:
        if self.pattern is None:
            return f"carbon's built-in fallback ({self.retentions}; no section matched)"
        return f"[{self.name}] (pattern = {self.pattern}, retentions = {self.retentions})"


#: What carbon uses when no section matches (carbon/storage.py: one point a minute, 7 days).
CARBON_FALLBACK = SchemaEntry("default", None, (Archive(60, 7 * 1440),))


def parse_schemas(text: str, source: str = "storage-schemas.conf") -> list[SchemaEntry]:
    """Sections in file order, as carbon reads them (sections without ``pattern`` or
    ``retentions`` are skipped, like carbon does), followed by carbon's fallback."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise ConfigError("storage_schemas", f"{source} is not a storage-schemas.conf: {exc}") from None
    entries = []
    for name in parser.sections():
        section = parser[name]
        if "pattern" not in section or "retentions" not in section or not section["pattern"]:
            continue
        try:
            archives = parse_retentions(section["retentions"])
            re.compile(section["pattern"])
        except (ValueError, re.error) as exc:
            raise ConfigError("storage_schemas", f"{source}: section [{name}]: {exc}") from None
        entries.append(SchemaEntry(name, section["pattern"], archives))
    entries.append(CARBON_FALLBACK)
    return entries


def load_schemas(path: str | Path) -> list[SchemaEntry]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("storage_schemas", f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_schemas(text, str(path))


def schema_for(entries: Sequence[SchemaEntry], path: str) -> SchemaEntry:
    """The schema carbon gives a new metric ``path``."""
    for entry in entries:
        if entry.matches(path):
            return entry
    return CARBON_FALLBACK


def _common_prefix(paths: Iterable[str]) -> str:
    """The longest run of whole leading nodes all ``paths`` share ("" when none)."""
    split = [p.split(".") for p in paths]
    if not split:
        return ""
    common = []
    for nodes in zip(*(s[:-1] for s in split)):
        if len(set(nodes)) != 1:
            break
        common.append(nodes[0])
    return ".".join(common)


def schema_entries(paths_by_scanner: Mapping[str, Sequence[str]]) -> str:
    """storage-schemas.conf sections (1 hour for 30 years) covering every path, to be put
    before any other section that matches them."""
    everything = [p for paths in paths_by_scanner.values() for p in paths]
    prefix = _common_prefix(everything)
    prefixes = [prefix] if prefix else sorted({_common_prefix(paths) for paths in paths_by_scanner.values()})
    blocks = []
    for prefix in prefixes:
        if not prefix:
            blocks.append("# (no common leading path: write a pattern that matches e.g. "
                          f"{everything[0]})")
            continue
        name = "hops_stability_" + re.sub(r"[^A-Za-z0-9]+", "_", prefix).strip("_")
        blocks.append(f"[{name}]\npattern = ^{re.escape(prefix)}\\.\nretentions = {HOPS_RETENTIONS}\n")
    return "\n".join(blocks)


@dataclass
class SchemaCheck:
    """Result of :func:`check_schemas`: ``errors`` (the schema loses data: refuse to start),
    ``warnings``, and ``verified`` (section -> number of paths it covers)."""

    errors: list[str]
    warnings: list[str]
    verified: dict[str, int]


def check_schemas(entries: Sequence[SchemaEntry], paths_by_scanner: Mapping[str, Sequence[str]],
                  source: str = "storage-schemas.conf") -> SchemaCheck:
    """Verify every path of every scanner against carbon's schemas."""
    errors: list[str] = []
    warnings: list[str] = []
    verified: dict[str, int] = {}
    for scanner, paths in paths_by_scanner.items():
        bad: dict[SchemaEntry, list[str]] = {}
        for path in paths:
            entry = schema_for(entries, path)
            if entry.problem() is not None or entry.pattern is None:
                bad.setdefault(entry, []).append(path)
            else:
                verified[entry.name] = verified.get(entry.name, 0) + 1
                warning = entry.warning()
                if warning and f"[{entry.name}]" not in " ".join(warnings):
                    warnings.append(f"{source}: {entry.describe()}: {warning}")
        for entry, examples in bad.items():
            why = entry.problem() or "carbon keeps 7 days at one point a minute and drops older scans"
            errors.append(f"{source}: {len(examples)} metric(s) of scanner {scanner!r}, e.g. {examples[0]}, "
                          f"fall under {entry.describe()}: {why}")
    return SchemaCheck(errors, warnings, verified)
