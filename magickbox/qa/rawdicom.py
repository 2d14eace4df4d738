"""Fast reads of the few attributes the loader needs, straight from the bytes pydicom
leaves unconverted.

``pydicom.dcmread`` keeps most elements as raw bytes until they are accessed; converting
them (validation, value objects) costs about as much per file as reading the file.  For
thousands of single-slice files, or an enhanced file with thousands of per-frame items,
that doubled the load time.  :func:`value` decodes a raw element's bytes directly (text
VRs split on backslashes, binary little-endian integers and floats) and falls back to
pydicom for anything else (big endian, an element already converted, unknown VRs).
:func:`frame_items` walks a raw PerFrameFunctionalGroupsSequence without building
pydicom datasets and returns the per-frame position and time attributes.
"""
from __future__ import annotations

import re
import struct
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

__all__ = ["value", "frame_items"]

_TEXT = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_LONG_VR = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_UNDEFINED = 0xFFFFFFFF


@lru_cache(maxsize=None)
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


@lru_cache(maxsize=None)
def _vr_of(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _decode(vr: str, data: bytes) -> Any:
    """A raw little-endian value -> str, list[str], number or list of numbers."""
    if vr in _TEXT:
        text = data.decode("utf-8", "replace") if vr in ("LO", "SH", "PN", "LT", "ST", "UC", "UT") \
            else data.decode("ascii", "replace")
        text = text.rstrip("\x00 ")
        parts = [p.strip() for p in text.split("\\")] if vr not in ("LT", "ST", "UT") else [text]
        if vr in ("DS", "IS"):
            nums = [float(p) if vr == "DS" else int(float(p)) for p in parts if p]
            return nums[0] if len(nums) == 1 else (nums or None)
        return parts[0] if len(parts) == 1 else parts
    fmt = _BINARY.get(vr)
    if fmt is None:
        raise ValueError(vr)
    size = struct.calcsize(fmt)
    values = struct.unpack(f"<{len(data) // size}{fmt}", data[: len(data) // size * size])
    return values[0] if len(values) == 1 else list(values)


def value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """The value of ``keyword`` in ``ds`` (plain Python types), or ``default``."""
    tag = _tag(keyword)
    try:
        elem = ds.get_item(tag)
    except KeyError:
        return default
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and elem.is_little_endian:
        vr = elem.VR or _vr_of(tag)
        if elem.value is None or elem.length == 0:
            return default
        try:
            result = _decode(str(vr), elem.value)
            return default if result in ("", None) else result
        except (ValueError, struct.error):
            pass
    result = ds.get(keyword, default)
    if result is None or result == "":
        return default
    if type(result).__name__ in ("MultiValue", "list", "tuple"):
        try:
            return [_plain(v) for v in result]
        except TypeError:
            return result
    return _plain(result)


def _plain(v: Any) -> Any:
    if isinstance(v, float) or type(v).__name__ in ("DSfloat", "DSdecimal"):
        return float(v)
    if isinstance(v, int) or type(v).__name__ == "IS":
        return int(v)
    return str(v) if not isinstance(v, (int, float)) else v


# -- per-frame functional groups -----------------------------------------------------------------

_FRAME_CONTENT = 0x00209111
_PLANE_POSITION = 0x00209113
_PLANE_ORIENTATION = 0x00209116
_TEMPORAL_INDEX = 0x00209128
_STACK_POSITION = 0x00209057
_FRAME_TIME = 0x00189074
_IPP = 0x00200032
_IOP = 0x00200037


def _parse_dataset(buf: bytes, pos: int, end: int, explicit: bool) -> tuple[dict[int, Any], int]:
    out: dict[int, Any] = {}
    unpack = struct.unpack_from
    while pos < end:
        group, elem = unpack("<HH", buf, pos)
        tag = group << 16 | elem
        if tag == 0xFFFEE00D:                      # item delimiter
            return out, pos + 8
        if explicit:
            vr = buf[pos + 4:pos + 6]
            if vr in _LONG_VR:
                length = unpack("<I", buf, pos + 8)[0]
                pos += 12
            else:
                length = unpack("<H", buf, pos + 6)[0]
                pos += 8
            is_sq = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
        else:
            length = unpack("<I", buf, pos + 4)[0]
            pos += 8
            is_sq = length == _UNDEFINED or _vr_of(tag) == "SQ"
        if is_sq:
            out[tag], pos = _parse_items(buf, pos, length, explicit)
        else:
            if length == _UNDEFINED:
                raise ValueError("undefined length outside a sequence")
            out[tag] = buf[pos:pos + length]
            pos += length
    return out, pos


def _parse_items(buf: bytes, pos: int, length: int, explicit: bool) -> tuple[list[dict[int, Any]], int]:
    end = len(buf) if length == _UNDEFINED else pos + length
    items: list[dict[int, Any]] = []
    while pos < end:
        group, elem, item_len = struct.unpack_from("<HHI", buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == 0xFFFEE0DD:                      # sequence delimiter
            return items, pos
        if tag != 0xFFFEE000:
            raise ValueError(f"expected an item, found ({group:04X},{elem:04X})")
        if item_len == _UNDEFINED:
            item, pos = _parse_dataset(buf, pos, len(buf), explicit)
        else:
            item, _ = _parse_dataset(buf, pos, pos + item_len, explicit)
            pos += item_len
        items.append(item)
    return items, end if length != _UNDEFINED else pos


def _first(item: dict[int, Any], tag: int) -> dict[int, Any] | None:
    seq = item.get(tag)
    return seq[0] if isinstance(seq, list) and seq else None


def _element_pattern(tag: int, vr: bytes, explicit: bool) -> re.Pattern[bytes]:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if explicit:
        return re.compile(re.escape(head + vr) + b"(..)", re.DOTALL)
    return re.compile(re.escape(head) + b"(....)", re.DOTALL)


_FIELDS = ("temporal", "stack", "time", "ipp", "iop")
_WIDTH = {"ipp": 3, "iop": 6}


def _numbers(texts: list[bytes], width: int) -> np.ndarray | None:
    """``width`` backslash-separated numbers per entry -> (n, width) floats (one C parse)."""
    joined = b" ".join(texts).replace(b"\\", b" ").replace(b"\x00", b" ").decode("ascii")
    values = np.array(joined.split(), dtype=np.float64)
    if values.size != len(texts) * width:
        return None
    return values.reshape(len(texts), width)


def _scan(data: bytes, explicit: bool, frames: int) -> dict[str, Any] | None:
    """Per-frame columns by scanning for the element headers (one of each per frame, in
    frame order); None unless every count is 0 or ``frames``."""
    found: dict[str, Any] = {}
    raw = np.frombuffer(data, dtype=np.uint8)
    for name, tag, vr in (("temporal", _TEMPORAL_INDEX, b"UL"), ("stack", _STACK_POSITION, b"UL"),
                          ("time", _FRAME_TIME, b"DT"), ("ipp", _IPP, b"DS"), ("iop", _IOP, b"DS")):
        matches = list(_element_pattern(tag, vr, explicit).finditer(data))
        if len(matches) not in (0, frames):
            return None
        if not matches:
            found[name] = _absent(name, frames)
            continue
        fmt = "<H" if explicit else "<I"
        if vr == b"UL":
            ends = np.fromiter((m.end() for m in matches), dtype=np.int64, count=frames)
            if any(struct.unpack(fmt, m.group(1))[0] != 4 for m in matches[:1]):
                return None
            found[name] = raw[ends[:, None] + np.arange(4)].copy().view("<u4").ravel().astype(np.float64)
            continue
        texts = [data[m.end():m.end() + struct.unpack(fmt, m.group(1))[0]] for m in matches]
        if vr == b"DT":
            found[name] = [t.decode("ascii").rstrip("\x00 ") or None for t in texts]
        else:
            numbers = _numbers(texts, _WIDTH[name])
            if numbers is None:
                return None
            found[name] = numbers
    return found


def _absent(name: str, frames: int) -> Any:
    if name == "time":
        return [None] * frames
    if name in _WIDTH:
        return np.full((frames, _WIDTH[name]), np.nan)
    return np.full(frames, np.nan)


def _floats(data: bytes | None) -> list[float] | None:
    if not data:
        return None
    return [float(p) for p in data.decode("ascii").rstrip("\x00 ").split("\\") if p.strip()]


def _columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"time": [row["time"] for row in rows]}
    for name in ("temporal", "stack"):
        out[name] = np.array([np.nan if row[name] is None else float(row[name]) for row in rows], dtype=np.float64)
    for name, width in _WIDTH.items():
        out[name] = np.array([row[name] if row[name] is not None and len(row[name]) == width else [np.nan] * width
                              for row in rows], dtype=np.float64).reshape(len(rows), width)
    return out


def frame_items(ds: Dataset) -> dict[str, Any]:
    """Per-frame columns: ``temporal`` (TemporalPositionIndex) and ``stack``
    (InStackPositionNumber) as float arrays, ``ipp`` (n × 3) and ``iop`` (n × 6) float
    arrays — NaN where absent — and ``time`` (FrameAcquisitionDateTime texts or None)."""
    elem = ds.get_item(0x52009230)
    if isinstance(elem, RawDataElement) and elem.is_little_endian and elem.value is not None:
        frames = value(ds, "NumberOfFrames")
        if frames:
            scanned = _scan(elem.value, not elem.is_implicit_VR, int(frames))
            if scanned is not None:
                return scanned
        try:
            items, _ = _parse_items(elem.value, 0, len(elem.value), not elem.is_implicit_VR)
            return _columns([_frame_fields(item) for item in items])
        except (ValueError, struct.error, IndexError):
            pass
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        content = item.FrameContentSequence[0] if "FrameContentSequence" in item else Dataset()
        position = item.PlanePositionSequence[0] if "PlanePositionSequence" in item else Dataset()
        orientation = item.PlaneOrientationSequence[0] if "PlaneOrientationSequence" in item else Dataset()
        out.append({
            "temporal": _int_or_none(content.get("TemporalPositionIndex")),
            "stack": _int_or_none(content.get("InStackPositionNumber")),
            "time": str(content.get("FrameAcquisitionDateTime") or "") or None,
            "ipp": [float(v) for v in position.ImagePositionPatient] if "ImagePositionPatient" in position else None,
            "iop": [float(v) for v in orientation.ImageOrientationPatient]
            if "ImageOrientationPatient" in orientation else None,
        })
    return _columns(out)


_PIXEL_MEASURES = 0x00289110
_PIXEL_VALUE_TRANSFORMATION = 0x00289145
_PIXEL_SPACING = 0x00280030
_RESCALE_INTERCEPT = 0x00281052
_RESCALE_SLOPE = 0x00281053


def shared_values(ds: Dataset) -> dict[str, Any]:
    """From the first SharedFunctionalGroupsSequence item: ``iop``, ``ipp``,
    ``pixel_spacing`` (lists of floats), ``slope`` and ``intercept`` (floats); None where
    absent.  Parsed from the raw bytes when possible (pydicom datasets otherwise)."""
    out: dict[str, Any] = {"iop": None, "ipp": None, "pixel_spacing": None, "slope": None, "intercept": None}
    elem = ds.get_item(0x52009229) if 0x52009229 in ds else None
    if elem is None:
        return out
    if isinstance(elem, RawDataElement) and elem.is_little_endian and elem.value is not None:
        try:
            items, _ = _parse_items(elem.value, 0, len(elem.value), not elem.is_implicit_VR)
        except (ValueError, struct.error, IndexError):
            items = None
        if items is not None:
            if not items:
                return out
            item = items[0]

            def one(seq: int, tag: int) -> list[float] | None:
                first = _first(item, seq)
                return _floats(first.get(tag)) if first else None
            out["iop"] = one(_PLANE_ORIENTATION, _IOP)
            out["ipp"] = one(_PLANE_POSITION, _IPP)
            out["pixel_spacing"] = one(_PIXEL_MEASURES, _PIXEL_SPACING)
            slope, intercept = one(_PIXEL_VALUE_TRANSFORMATION, _RESCALE_SLOPE), \
                one(_PIXEL_VALUE_TRANSFORMATION, _RESCALE_INTERCEPT)
            out["slope"] = slope[0] if slope else None
            out["intercept"] = intercept[0] if intercept else None
            return out
    groups = ds.SharedFunctionalGroupsSequence
    if not groups:
        return out
    g = groups[0]

    def seq(name: str) -> Dataset | None:
        return g[name][0] if name in g and g[name].value else None
    if seq("PlaneOrientationSequence") is not None:
        out["iop"] = [float(v) for v in seq("PlaneOrientationSequence").ImageOrientationPatient]
    if seq("PlanePositionSequence") is not None:
        out["ipp"] = [float(v) for v in seq("PlanePositionSequence").ImagePositionPatient]
    if seq("PixelMeasuresSequence") is not None and "PixelSpacing" in seq("PixelMeasuresSequence"):
        out["pixel_spacing"] = [float(v) for v in seq("PixelMeasuresSequence").PixelSpacing]
    transform = seq("PixelValueTransformationSequence")
    if transform is not None:
        out["slope"] = float(transform.RescaleSlope) if "RescaleSlope" in transform else None
        out["intercept"] = float(transform.RescaleIntercept) if "RescaleIntercept" in transform else None
    return out


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _frame_fields(item: dict[int, Any]) -> dict[str, Any]:
    content = _first(item, _FRAME_CONTENT) or {}
    position = _first(item, _PLANE_POSITION) or {}
    orientation = _first(item, _PLANE_ORIENTATION) or {}

    def ul(data: bytes | None) -> int | None:
        return struct.unpack("<I", data[:4])[0] if data and len(data) >= 4 else None

    frame_time = content.get(_FRAME_TIME)
    return {"temporal": ul(content.get(_TEMPORAL_INDEX)), "stack": ul(content.get(_STACK_POSITION)),
            "time": frame_time.decode("ascii").rstrip("\x00 ") if frame_time else None,
            "ipp": _floats(position.get(_IPP)), "iop": _floats(orientation.get(_IOP))}
