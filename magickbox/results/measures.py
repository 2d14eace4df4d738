"""A bucket's measures (``measures.json``) as Graphite datapoints, never with patient data.

``measures.json`` (written by a bucket into its output folder), version 1::

    {"version": 1,
     "prefix": "hops.stability.prisma1.32ch.fbirn",   # optional, see below
     "time": "2025-01-07T07:31:46",                   # optional: acquisition time of the data
     "measures": [
        {"name": "snr", "value": 123.4, "unit": "", "labels": {"roi": "21x21"}},
        {"name": "slice.12.sfnr", "value": 98.1, "time": "2025-01-07T07:31:46+01:00"}]}

* ``name``: dot-separated components of ``[A-Za-z0-9_-]``; ``value``: a finite number;
  ``unit`` and ``labels`` are kept on the job record, not in the metric path.
* Time of a datapoint: the measure's ``time``, else the file's ``time``, else the study's
  acquisition date and time (``AcquisitionDateTime``, ``AcquisitionDate``+``Time``,
  ``SeriesDate``+``Time``, ``StudyDate``+``Time``), all in the node's configured time zone
  when they carry no offset.  Never the processing time: a measure with no time at all
  is refused.
* Metric path: ``hops.measures.<bucket>.<subject key>.<name>``, where the subject key
  comes from the node's policy (:class:`SubjectPolicy`): the StationName, a site alias of
  the device serial number, a fixed alias, or a salted hash; never PatientName,
  PatientID, AccessionNumber, birth date or UIDs.  A bucket allowed to (its ``info.json``
  lists the prefix under ``measures.prefixes``) may give its own ``prefix`` instead, e.g.
  to put phantom values into the ``hops.stability.<scanner>.<coil>`` tree.
* Every path is checked against the study's identifying values (:func:`phi_values`): a
  component that contains an identifier or date of the study (however punctuated) or a
  word of a person's name, a path containing one of its UIDs, or a component that looks
  like a UID or a date of birth, is refused.  A refused measures file is reported with the reason and nothing is sent.

Delivery (confirmed, retried until carbon has them, across restarts) and the job record:
:mod:`magickbox.results.measure_stage`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["MeasuresError", "Measure", "MeasureSet", "SubjectPolicy", "parse_measures",
           "datapoint_lines", "phi_values", "study_time", "PHI_KEYWORDS"]

_COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
PHI_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID", "InstitutionName",
                "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "IssuerOfPatientID")


class MeasuresError(ValueError):
    """measures.json is invalid or would put identifying data into a metric path."""


@dataclass(frozen=True)
class Measure:
    name: str
    value: float
    unit: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    time: dt.datetime | None = None


@dataclass(frozen=True)
class MeasureSet:
    measures: tuple[Measure, ...]
    prefix: str = ""
    time: dt.datetime | None = None


def _parse_time(where: str, value: Any, tz: dt.tzinfo | None) -> dt.datetime:
    if not isinstance(value, str):
        raise MeasuresError(f"{where}: time must be an ISO 8601 string, not {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MeasuresError(f"{where}: time {value!r} is not ISO 8601 (YYYY-MM-DDTHH:MM:SS[+HH:MM])") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def parse_measures(text: str, tz: dt.tzinfo | None, source: str = "measures.json") -> MeasureSet:
    """Parse and validate a measures file; :class:`MeasuresError` names the file and entry."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeasuresError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise MeasuresError(f"{source}: expected an object with 'measures'")
    if data.get("version", 1) != 1:
        raise MeasuresError(f"{source}: 'version' {data.get('version')!r} is not supported (1)")
    unknown = set(data) - {"version", "prefix", "time", "measures", "subject", "comment"}
    if unknown:
        raise MeasuresError(f"{source}: unknown key(s) {sorted(unknown)}")
    prefix = data.get("prefix", "")
    if prefix and (not isinstance(prefix, str) or not _NAME.fullmatch(prefix)):
        raise MeasuresError(f"{source}: 'prefix' must be dot-separated [A-Za-z0-9_-] components, not {prefix!r}")
    default_time = _parse_time(f"{source}: 'time'", data["time"], tz) if "time" in data else None
    raw = data.get("measures")
    if not isinstance(raw, list):
        raise MeasuresError(f"{source}: 'measures' must be a list")
    measures = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"{source}: measures[{i}]"
        if not isinstance(entry, dict):
            raise MeasuresError(f"{where}: must be an object with 'name' and 'value'")
        extra = set(entry) - {"name", "value", "unit", "labels", "time"}
        if extra:
            raise MeasuresError(f"{where}: unknown key(s) {sorted(extra)}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise MeasuresError(f"{where}: 'name' must be dot-separated [A-Za-z0-9_-] components, not {name!r}")
        if name in seen:
            raise MeasuresError(f"{where}: 'name' {name!r} appears twice")
        seen.add(name)
        value = entry.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MeasuresError(f"{where} ({name}): 'value' must be a finite number, not {value!r}")
        labels = entry.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
            raise MeasuresError(f"{where} ({name}): 'labels' must be an object")
        unit = entry.get("unit", "")
        if not isinstance(unit, str):
            raise MeasuresError(f"{where} ({name}): 'unit' must be a string")
        when = _parse_time(f"{where} ({name})", entry["time"], tz) if "time" in entry else None
        measures.append(Measure(name, float(value), unit, {k: str(v) for k, v in labels.items()}, when))
    return MeasureSet(tuple(measures), prefix, default_time)


# -- who the measures are about -----------------------------------------------------------------
def _safe_token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text.strip()).strip("_")[:64]


@dataclass(frozen=True)
class SubjectPolicy:
    """How a bucket's measures are keyed: ``source`` is ``"station"`` (StationName),
    ``"serial"`` (DeviceSerialNumber through ``aliases``; unknown serials are hashed),
    ``"alias"`` (the fixed ``alias``) or ``"hash"`` (salted SHA-256 of StationName and
    DeviceSerialNumber, 12 hex digits)."""
    source: str = "station"
    aliases: Mapping[str, str] = field(default_factory=dict)
    alias: str = ""
    salt: str = ""

    def __post_init__(self) -> None:
        if self.source not in ("station", "serial", "alias", "hash"):
            raise MeasuresError(f"subject source must be station, serial, alias or hash, not {self.source!r}")
        if self.source == "alias" and not _COMPONENT.fullmatch(self.alias or ""):
            raise MeasuresError(f"subject alias must be a [A-Za-z0-9_-] token, not {self.alias!r}")

    def _hash(self, header: Mapping[str, str]) -> str:
        text = f"{self.salt}|{header.get('StationName', '')}|{header.get('DeviceSerialNumber', '')}"
        return "h" + hashlib.sha256(text.encode()).hexdigest()[:12]

    def key(self, header: Mapping[str, str]) -> str:
        """The subject key for a study with these (safe) header values."""
        if self.source == "alias":
            return self.alias
        if self.source == "hash":
            return self._hash(header)
        if self.source == "serial":
            serial = header.get("DeviceSerialNumber", "").strip()
            return self.aliases.get(serial) or self._hash(header)
        station = _safe_token(header.get("StationName", ""))
        return station or "unknown_station"


#: identifying values that are person or institution names: compared word by word
_NAME_KEYWORDS = {"PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                  "InstitutionName"}
_UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}


def _alnum(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def phi_values(header: Mapping[str, str]) -> set[str]:
    """The study's identifying values as checks for :func:`_check_path`:

    * ``word:<w>`` - a word (3+ characters) of a person or institution name: refused when a
      path component has that word (split at anything not a letter or digit; ``Luc``
      does not refuse ``fluctuation``);
    * ``id:<v>`` - an identifier, date or whole name with only its letters and digits
      (4+ of them): refused when a component contains it however it is punctuated
      (``AB1234`` refuses ``ab-1234``, birth date ``19800101`` refuses ``1980-01-01``);
    * ``uid:<u>`` - a UID's digits: refused when the path's letters and digits contain
      them whole, however separated (its parts, e.g. a device serial number inside a
      Siemens UID, are not identifying)."""
    values: set[str] = set()
    for key in PHI_KEYWORDS:
        text = str(header.get(key, "") or "").strip()
        if not text:
            continue
        if key in _UID_KEYWORDS:
            values.add(f"uid:{_alnum(text)}")
            continue
        whole = _alnum(text)
        if len(whole) >= 4:
            values.add(f"id:{whole}")
        elif len(whole) == 3:
            values.add(f"word:{whole}")
        if key in _NAME_KEYWORDS:
            values |= {f"word:{w}" for w in re.split(r"[^0-9a-z]+", text.lower()) if len(w) >= 3}
    return values


def _check_path(path: str, phi: set[str]) -> None:
    refused = MeasuresError("a metric path would contain an identifying value of the study "
                            "(patient, accession or UID field): refused")
    whole_path = _alnum(path)
    if any(v.startswith("uid:") and len(v) > 11 and v[4:] in whole_path for v in phi):
        raise refused
    for index, component in enumerate(path.split(".")):
        if re.fullmatch(r"\d{8,}", component) or re.fullmatch(r"(19|20)\d{6}", component):
            # the component itself is not repeated: it may be an identifier
            raise MeasuresError(f"metric path component {index + 1} looks like a UID, an ID or a date: refused")
        words = {f"word:{w}" for w in re.split(r"[^0-9a-z]+", component.lower()) if w}
        flat = _alnum(component)
        if words & phi or any(v.startswith("id:") and v[3:] in flat for v in phi):
            raise refused


def study_time(header: Mapping[str, str], tz: dt.tzinfo | None) -> dt.datetime | None:
    """The acquisition time of the study from its header (DICOM DA/TM/DT strings)."""
    def from_dt(text: str) -> dt.datetime | None:
        m = re.fullmatch(r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?", text.strip())
        if not m:
            return None
        day = dt.datetime.strptime(m.group(1), "%Y%m%d")
        moment = day.replace(hour=int(m.group(2) or 0), minute=int(m.group(3) or 0), second=int(m.group(4) or 0))
        if m.group(5):
            sign = 1 if m.group(5)[0] == "+" else -1
            offset = dt.timedelta(hours=int(m.group(5)[1:3]), minutes=int(m.group(5)[3:5])) * sign
            return moment.replace(tzinfo=dt.timezone(offset))
        return moment.replace(tzinfo=tz)

    if header.get("AcquisitionDateTime"):
        found = from_dt(header["AcquisitionDateTime"])
        if found:
            return found
    for date_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                               ("StudyDate", "StudyTime")):
        if header.get(date_key):
            found = from_dt(header[date_key].strip() + (header.get(time_key) or "").strip()[:6])
            if found:
                return found
    return None


def granted_data(prefix: str, patterns: Iterable[str]) -> list[str] | None:
    """The components of ``prefix`` that come from data, under the allowed pattern that
    leaves the fewest (None: no pattern allows it).  A pattern is a dotted path whose
    components are literal (the site's configuration, not checked) or ``*`` (any one
    component, from data); components beyond the pattern are data too:
    ``hops.stability.*.*.fbirn`` allows ``hops.stability.prisma1.32ch.fbirn`` with data
    ``prisma1``, ``32ch``."""
    parts = prefix.split(".")
    best: list[str] | None = None
    for pattern in patterns:
        literal = pattern.split(".")
        if len(parts) < len(literal) or not all(p in ("*", c) for p, c in zip(literal, parts)):
            continue
        data = [c for p, c in zip(literal, parts) if p == "*"] + parts[len(literal):]
        if best is None or len(data) < len(best):
            best = data
    return best


def datapoint_lines(measure_set: MeasureSet, bucket: str, header: Mapping[str, str], policy: SubjectPolicy,
                    tz: dt.tzinfo | None, allowed_prefixes: Iterable[str] = (),
                    phi: set[str] | None = None) -> list[str]:
    """Graphite plaintext lines (``path value epoch``) for a job's measures.

    ``header``: the study's header values by keyword (identifying ones are used only to
    check that none reaches a path).  Raises :class:`MeasuresError` for a prefix the
    bucket may not use, a measure without any time, or a path that would carry
    identifying data.  ``phi``: more identifying values to refuse (e.g. of the study's
    other series), besides those of ``header``.  ``tz`` None: this host's zone."""
    if not _COMPONENT.fullmatch(bucket):
        raise MeasuresError(f"bucket name {bucket!r} is not a metric-safe token")
    if measure_set.prefix:
        allowed = [p.rstrip(".") for p in allowed_prefixes]
        data_parts = granted_data(measure_set.prefix, allowed)
        if data_parts is None:
            raise MeasuresError(f"prefix {measure_set.prefix!r} is not allowed for bucket {bucket!r} "
                                f"(its info.json lists {allowed or 'none'} under measures.prefixes)")
        root = measure_set.prefix
        from_data = ".".join(data_parts)
    else:
        from_data = policy.key(header)
        root = f"hops.measures.{bucket}.{from_data}"
    fallback = measure_set.time or study_time(header, tz)
    phi = phi_values(header) | (phi or set())
    if from_data:
        _check_path(from_data, phi)    # what the site configured (bucket, allowed prefix) is not data
    lines = []
    for m in measure_set.measures:
        when = m.time or fallback
        if when is None:
            raise MeasuresError(f"measure {m.name!r} has no time and the study has no acquisition date/time: "
                                "refused (measures are never stamped with the processing time)")
        _check_path(m.name, phi)
        path = f"{root}.{m.name}"
        lines.append(f"{path} {m.value!r} {int(when.timestamp())}")
    return lines
