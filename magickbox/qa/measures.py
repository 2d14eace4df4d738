"""``measures.json`` of the QA bucket, metric-safe scanner and coil names, and the
bucket's configuration.

Schema (version 1; the node delivers it to Graphite, see the README's "measures.json")::

    {"version": 1,
     "prefix": "hops.stability.<scanner>.<coil>.fbirn",   # optional
     "time": "2025-01-07T07:31:46",                       # acquisition time of the series
     "measures": [{"name": "snr", "value": 123.4, "unit": "", "labels": {}}, ...]}

``name`` is dot-separated ``[A-Za-z0-9_]+`` components; a measure may carry its own
``time``.  ``time`` is ISO 8601: naive means the node's configured time zone; it is the
acquisition time from the DICOM header, never the processing time.

Names never contain patient data: the scanner comes from StationName or a
device-serial → alias map, the coil from the coil tag; both are reduced to
``[a-z0-9_]`` and replaced by ``unknown`` if they match any patient/study identifier of
the series (PatientName, PatientID, AccessionNumber, birth date, UIDs).
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydicom.dataset import Dataset

from .fbirn import SLICE_METRICS, FbirnResult
from .rawdicom import value as _v

__all__ = ["QaConfig", "ConfigError", "load_config", "metric_token", "scanner_name", "coil_name", "build_measures",
           "write_json", "NAME_RE", "UNITS"]

NAME_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
DEFAULT_PREFIX = "hops.stability.{scanner}.{coil}.fbirn"

UNITS = {"mean": "", "snr": "", "sfnr": "", "fluctuation_pct": "%", "drift_pct": "%", "drift_raw_pct": "%",
         "rdc": "px", "ghost_pct": "%", "volumes": "", "slices": "", "roi_size": "px"}


class ConfigError(ValueError):
    """A bad bucket configuration; the message names the key (``qa.roi_size: ...``)."""


@dataclass(frozen=True)
class QaConfig:
    """The ``"qa"`` object of the bucket's info.json (every key optional)::

        "qa": {"roi_size": 21, "skip_volumes": 2, "phase_encoding": null,
               "scanner_source": "station_name",          # or "device_serial"
               "scanner_aliases": {"<DeviceSerialNumber or StationName>": "prisma1"},
               "coil_aliases": {"HeadNeck_20": "20ch"},
               "prefix": "hops.stability.{scanner}.{coil}.fbirn",   # "" = no prefix
               "per_slice": true, "secondary_capture": true,
               "series_volumes": null, "min_volumes": 10, "pending_days": 7}
    """

    roi_size: int = 21
    skip_volumes: int = 2
    phase_encoding: str | None = None
    scanner_source: str = "station_name"
    scanner_aliases: Mapping[str, str] = field(default_factory=dict)
    coil_aliases: Mapping[str, str] = field(default_factory=dict)
    prefix: str = DEFAULT_PREFIX
    per_slice: bool = True
    secondary_capture: bool = True
    series_volumes: int | None = None
    min_volumes: int = 10
    pending_days: float = 7.0


def load_config(data: Mapping[str, Any] | None, where: str = "qa") -> QaConfig:
    """Validate the ``qa`` object; :class:`ConfigError` names the key."""
    data = dict(data or {})
    known = set(QaConfig.__dataclass_fields__)
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown setting; known: {', '.join(sorted(known))}")

    def integer(key: str, lo: int, hi: int, allow_none: bool = False) -> int | None:
        value = data.get(key, getattr(QaConfig, key) if key in QaConfig.__dict__ else None)
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{where}.{key}: expected an integer {lo}-{hi}, found {value!r}")
        return value

    def flag(key: str) -> bool:
        value = data.get(key, getattr(QaConfig, key))
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, found {value!r}")
        return value

    def mapping(key: str) -> dict[str, str]:
        value = data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{where}.{key}: expected an object of \"name\": \"alias\" strings")
        for k, v in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", v):
                raise ConfigError(f"{where}.{key}.{k}: the alias {v!r} must be letters, digits or _")
        return dict(value)

    roi = integer("roi_size", 3, 255)
    skip = integer("skip_volumes", 0, 1000)
    phase = data.get("phase_encoding")
    if phase is not None and phase not in ("COL", "ROW"):
        raise ConfigError(f"{where}.phase_encoding: expected \"COL\", \"ROW\" or null, found {phase!r}")
    source = data.get("scanner_source", "station_name")
    if source not in ("station_name", "device_serial"):
        raise ConfigError(f"{where}.scanner_source: expected \"station_name\" or \"device_serial\", found {source!r}")
    prefix = data.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str):
        raise ConfigError(f"{where}.prefix: expected a string, found {prefix!r}")
    if prefix:
        try:
            sample = prefix.format(scanner="s", coil="c")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{where}.prefix: only {{scanner}} and {{coil}} may be used ({exc})") from None
        if not NAME_RE.fullmatch(sample):
            raise ConfigError(f"{where}.prefix: {prefix!r} is not a dot-separated metric path")
    pending = data.get("pending_days", 7.0)
    if isinstance(pending, bool) or not isinstance(pending, (int, float)) or pending <= 0:
        raise ConfigError(f"{where}.pending_days: expected a number > 0, found {pending!r}")
    return QaConfig(roi_size=roi, skip_volumes=skip, phase_encoding=phase, scanner_source=source,
                    scanner_aliases=mapping("scanner_aliases"), coil_aliases=mapping("coil_aliases"),
                    prefix=prefix, per_slice=flag("per_slice"), secondary_capture=flag("secondary_capture"),
                    series_volumes=integer("series_volumes", 1, 100000, allow_none=True),
                    min_volumes=integer("min_volumes", 3, 100000), pending_days=float(pending))


def metric_token(text: Any) -> str:
    """``"Head/Neck 20"`` -> ``"head_neck_20"``; empty -> ``"unknown"``."""
    token = re.sub(r"[^A-Za-z0-9_]+", "_", str(text or "")).strip("_").lower()
    return re.sub(r"_+", "_", token) or "unknown"


def _identifiers(header: Dataset) -> set[str]:
    """Tokens of every patient/study identifier in the header (never allowed in names)."""
    out: set[str] = set()
    for key in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate", "StudyID",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "IssuerOfPatientID",
                "PatientAddress", "OtherPatientNames", "PatientMotherBirthName"):
        value = _v(header, key)
        if value is None:
            continue
        for part in (value if isinstance(value, list) else [value]):
            text = str(part)
            for piece in [text] + re.split(r"[\^=\s]+", text):
                token = metric_token(piece)
                if token != "unknown" and len(token) >= 3:
                    out.add(token)
    return out


def _guard(token: str, header: Dataset, what: str, notes: list[str]) -> str:
    """``token``, or ``unknown`` if it equals a patient/study identifier of the series or
    contains one that looks like a number (IDs, dates, UIDs: 6+ characters with a digit;
    plain words such as "phantom" only by equality)."""
    ids = _identifiers(header)
    if token != "unknown" and (token in ids or any(len(i) >= 6 and any(c.isdigit() for c in i) and i in token
                                                   for i in ids)):
        notes.append(f"the {what} name matched a patient/study identifier of the series: using 'unknown'")
        return "unknown"
    return token


def scanner_name(header: Dataset, config: QaConfig, notes: list[str]) -> str:
    """The metric-safe scanner name (see :class:`QaConfig` ``scanner_source``)."""
    serial = str(_v(header, "DeviceSerialNumber", "") or "")
    station = str(_v(header, "StationName", "") or "")
    if config.scanner_source == "device_serial":
        if serial not in config.scanner_aliases:
            raise ConfigError(f"qa.scanner_aliases: no alias for the device serial number {serial or '(none)'!r} "
                              f"of this series (scanner_source is device_serial)")
        return _guard(metric_token(config.scanner_aliases[serial]), header, "scanner", notes)
    if station in config.scanner_aliases:
        return _guard(metric_token(config.scanner_aliases[station]), header, "scanner", notes)
    if serial and serial in config.scanner_aliases:
        return _guard(metric_token(config.scanner_aliases[serial]), header, "scanner", notes)
    if not station:
        notes.append("no StationName in the header: scanner 'unknown' (set qa.scanner_aliases by device serial)")
    return _guard(metric_token(station), header, "scanner", notes)


def coil_tag(header: Dataset) -> str | None:
    """The receive coil as the scanner wrote it: Siemens (0051,100F), XA (0021,114F),
    ReceiveCoilName (0018,1250), or the enhanced MR Receive Coil functional group."""
    for group, creator, element in ((0x0051, "SIEMENS MR HEADER", 0x0F), (0x0021, "SIEMENS MR SDS 01", 0x4F)):
        try:
            block = header.private_block(group, creator)
            if element in block and block[element].value:
                return str(block[element].value).strip()
        except (KeyError, ValueError):
            pass
    name = _v(header, "ReceiveCoilName")
    if name:
        return str(name)
    groups = header.get("SharedFunctionalGroupsSequence")
    if groups and "MRReceiveCoilSequence" in groups[0]:
        coil = groups[0].MRReceiveCoilSequence[0].get("ReceiveCoilName")
        if coil:
            return str(coil)
    return None


def coil_name(header: Dataset, config: QaConfig, notes: list[str]) -> str:
    raw = coil_tag(header)
    if raw is None:
        notes.append("no coil tag in the header: coil 'unknown'")
        return "unknown"
    if raw in config.coil_aliases:
        return _guard(metric_token(config.coil_aliases[raw]), header, "coil", notes)
    return _guard(metric_token(raw), header, "coil", notes)


def build_measures(result: FbirnResult, time: str, prefix: str | None, per_slice: bool = True) -> dict[str, Any]:
    """The measures.json document of one analysis."""
    measures = []
    for name, value in result.measures.items():
        base = name.split(".")[0]
        unit = UNITS.get(name, "mm" if base == "cmass" else "%" if base == "weisskoff" else "")
        measures.append({"name": name, "value": round(float(value), 6), "unit": unit, "labels": {}})
    if per_slice:
        width = max(2, len(str(result.slices and max(result.slices) + 1 or 0)))
        for z, values in sorted(result.slices.items()):
            for name in SLICE_METRICS:
                if name in values:
                    measures.append({"name": f"slice.{z + 1:0{width}d}.{name}", "value": round(values[name], 6),
                                     "unit": UNITS.get(name, ""), "labels": {}})
    for m in measures:
        assert NAME_RE.fullmatch(m["name"]), m["name"]
    doc: dict[str, Any] = {"version": 1}
    if prefix:
        doc["prefix"] = prefix
    doc["time"] = time
    doc["measures"] = measures
    return doc


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
