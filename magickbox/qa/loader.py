"""Read one phantom fMRI series from a directory, whatever layout the scanner wrote.

Every file under the given paths is read once with pydicom.  Skipped, each with a note
naming the file or series: files that are not DICOM, DICOM objects without pixel data
(reports, presentation states, raw data), localizers (ImageType ``LOCALIZER`` or a
localizer/scout/survey series description), and every series but the phantom series —
the series with the most volumes (originals before derived ones).

Images are grouped into series by SeriesNumber, descriptions, matrix and SOP class — not
by UIDs, because Siemens XA "classic" exports give every volume its own
StudyInstanceUID (and SeriesInstanceUID).  Within a series every image becomes a record
(slice position, time key, pixels):

* **classic** single-frame files: position along the slice normal (ImagePositionPatient ·
  (row × column direction)), else SliceLocation;
* **Siemens mosaic** (ImageType MOSAIC, also the XA Secondary Capture variant): the
  tiles of each file in order; the slice count from the CSA ``NumberOfImagesInMosaic``
  (0019,100A), else the tile size from AcquisitionMatrix (or the MR frequency/phase
  steps) and the tiles up to the last non-empty one;
* **enhanced** multi-frame files (one per series or one per volume): per-frame
  PlanePositionSequence and FrameContentSequence.

The time order within each slice position uses the first key that is present and
distinct for every image: TemporalPositionIdentifier/TemporalPositionIndex,
AcquisitionNumber, acquisition time, InstanceNumber.  Two images with the same position
and time key are an error (duplicate files); positions with fewer images than others
(an aborted run) leave the incomplete last volumes out, with a note.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .rawdicom import frame_items, shared_values
from .rawdicom import value as _v

__all__ = ["Series", "LoadError", "load_series", "dicom_datetime"]

_LOCALIZER_RE = re.compile(r"locali[sz]er|scout|survey|3[- _]?plane|aahead|tri[- ]?pilot", re.IGNORECASE)
_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
#: values larger than this (bytes) are not read with the header: native pixel data that
#: large is mapped from the file instead of copied (a multi-frame series); per-frame
#: functional groups (a few hundred bytes per frame) stay below it
_DEFER_BYTES = 8 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF


class LoadError(ValueError):
    """No analysable phantom series in the input (the message says why)."""


@dataclass
class Series:
    """The phantom series: ``data[t, z, y, x]`` and what the analysis and naming need."""

    data: np.ndarray
    spacing_mm: tuple[float, float, float]         # slice, row, column
    phase_encoding: str | None                     # "COL", "ROW" or None
    tr_seconds: float | None
    layout: str                                    # classic | mosaic | enhanced
    header: Dataset                                # first image's header (no pixel data)
    acquisition_time: _dt.datetime | None          # first analysed image; aware if the header has a zone
    files: list[Path]
    volume_keys: list[Any]                         # identity of each volume (time key)
    expected_volumes: int | None                   # NumberOfTemporalPositions, if present
    study_count: int                               # distinct StudyInstanceUIDs merged
    notes: list[str] = field(default_factory=list)

    @property
    def volumes(self) -> int:
        return self.data.shape[0]


@dataclass
class _Image:
    """One file that holds pixel data, with the attributes the loader needs."""

    path: Path
    ds: Dataset
    kind: str                 # single | mosaic | enhanced
    time: _dt.datetime | None = None

    def pixels(self) -> np.ndarray:
        """All frames (F, rows, columns) without copying for uncompressed data."""
        ds = self.ds
        rows, cols = int(_v(ds, "Rows")), int(_v(ds, "Columns"))
        frames = int(_v(ds, "NumberOfFrames", 1) or 1)
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        bits, signed = int(_v(ds, "BitsAllocated")), int(_v(ds, "PixelRepresentation", 0))
        if ts in _NATIVE and int(_v(ds, "SamplesPerPixel", 1)) == 1 and bits in (8, 16) and \
                (signed == 0 or int(_v(ds, "BitsStored", bits)) == bits):
            dtype = np.dtype({(16, 0): "<u2", (16, 1): "<i2", (8, 0): "u1", (8, 1): "i1"}[(bits, signed)])
            deferred = ds.get_item(0x7FE00010, keep_deferred=True)
            count = frames * rows * cols
            if deferred is not None and deferred.value is None and deferred.length != _UNDEFINED_LENGTH and \
                    getattr(deferred, "value_tell", None) is not None and deferred.length >= count * dtype.itemsize:
                # read-only map of the file's pixel data: no copy of the whole series
                arr = np.memmap(self.path, dtype=dtype, mode="r", offset=deferred.value_tell,
                                shape=(count,)).view(np.ndarray)
            else:
                arr = np.frombuffer(ds.get_item(0x7FE00010).value, dtype=dtype, count=count)
        else:
            arr = ds.pixel_array
        arr = arr.reshape(frames, rows, cols)
        slope, intercept = _rescale(ds)
        if slope != 1 or intercept != 0:
            arr = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        return arr


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope, intercept = _v(ds, "RescaleSlope"), _v(ds, "RescaleIntercept")
    if slope is None and 0x52009229 in ds:
        shared = shared_values(ds)
        slope, intercept = shared["slope"], shared["intercept"]
    return float(slope if slope is not None else 1), float(intercept if intercept is not None else 0)


def _shared(ds: Dataset, sequence: str) -> Dataset | None:
    groups = ds.get("SharedFunctionalGroupsSequence")
    if groups and sequence in groups[0] and groups[0][sequence].value:
        return groups[0][sequence][0]
    return None


def dicom_datetime(date: str | None, time: str | None = None, offset: str | None = None) -> _dt.datetime | None:
    """DA + TM (or a DT in ``date`` when ``time`` is None) -> datetime; aware when the
    DT carries a zone or ``offset`` (TimezoneOffsetFromUTC, ``+0100``) is given."""
    text = str(date or "").strip()
    if time is not None:
        text = text + str(time or "").strip()
    m = re.fullmatch(r"(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?", text)
    if not m or not text:
        return None
    day, hh, mm, ss, frac, zone = m.groups()
    try:
        value = _dt.datetime(int(day[:4]), int(day[4:6]), int(day[6:]), int(hh or 0), int(mm or 0),
                             int(ss or 0), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None
    zone = zone or (str(offset).strip() if offset else None)
    if zone and re.fullmatch(r"[+-]\d{4}", zone):
        sign = 1 if zone[0] == "+" else -1
        value = value.replace(tzinfo=_dt.timezone(sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:]))))
    return value


def _time_of(ds: Dataset) -> _dt.datetime | None:
    """Acquisition date/time of an image (else content, series, study date/time)."""
    offset = _v(ds, "TimezoneOffsetFromUTC")
    value = dicom_datetime(_v(ds, "AcquisitionDateTime"), offset=offset)
    if value is not None:
        return value
    for date, time in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                       ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
        value = dicom_datetime(_v(ds, date), _v(ds, time), offset)
        if value is not None:
            return value
    return None


def _seconds(value: _dt.datetime | None) -> float | None:
    if value is None:
        return None
    return (value.replace(tzinfo=None) - _dt.datetime(1970, 1, 1)).total_seconds()


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _kind(ds: Dataset) -> str:
    if int(_v(ds, "NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return "enhanced"
    if any(str(v).upper() == "MOSAIC" for v in _list(_v(ds, "ImageType"))):
        return "mosaic"
    return "single"


def _is_localizer(ds: Dataset) -> bool:
    if any("LOCALIZER" in str(v).upper() for v in _list(_v(ds, "ImageType"))):
        return True
    return any(_LOCALIZER_RE.search(str(_v(ds, k, ""))) for k in ("SeriesDescription", "ProtocolName"))


def _describe(ds: Dataset) -> str:
    return f"series {_v(ds, 'SeriesNumber', '?')} '{_v(ds, 'SeriesDescription') or _v(ds, 'ProtocolName') or ''}'"


def _group_key(image: _Image) -> tuple:
    ds = image.ds
    return (str(_v(ds, "SeriesNumber", "")), str(_v(ds, "SeriesDescription", "")), str(_v(ds, "ProtocolName", "")),
            int(_v(ds, "Rows")), int(_v(ds, "Columns")), image.kind, str(_v(ds, "SOPClassUID", "")))


def _normal(orientation: Any) -> np.ndarray | None:
    try:
        o = np.array([float(v) for v in orientation], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if o.size != 6:
        return None
    n = np.cross(o[:3], o[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


@dataclass
class _Records:
    """Every 2-D image of a series, as columns: slice position (mm along the normal,
    rounded to 0.01), time keys (temporal index, acquisition number, time in s, instance
    number; NaN where absent), the image (index into the series' files) and its frame."""

    pos: np.ndarray
    keys: np.ndarray
    image: np.ndarray
    frame: np.ndarray
    mosaic: tuple[int, int, int] | None = None


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _mosaic_layout(image: _Image) -> tuple[int, int, int]:
    """(slices, tile rows, tile columns) of a mosaic file."""
    ds = image.ds
    rows, cols = int(_v(ds, "Rows")), int(_v(ds, "Columns"))
    count = None
    try:
        block = ds.private_block(0x0019, "SIEMENS CSA HEADER")
        if 0x0A in block:
            count = int(block[0x0A].value)
    except (KeyError, ValueError, TypeError):
        count = None
    if count:
        k = math.ceil(math.sqrt(count))
        if rows % k or cols % k:
            raise LoadError(f"{image.path.name}: a {rows}x{cols} mosaic cannot hold {count} slices in {k}x{k} tiles")
        return count, rows // k, cols // k
    tile = None
    matrix = [int(v) for v in _list(_v(ds, "AcquisitionMatrix")) if int(v)]
    steps = [_int(_v(ds, k)) for k in ("MRAcquisitionFrequencyEncodingSteps", "MRAcquisitionPhaseEncodingStepsInPlane")]
    for candidate in (matrix, [s for s in steps if s]):
        if candidate and rows % min(candidate) == 0 and cols % min(candidate) == 0 and rows // min(candidate) > 1:
            tile = (min(candidate), min(candidate)) if len(set(candidate)) == 1 else None
            if tile is None and len(candidate) == 2:
                tr, tc = (candidate[1], candidate[0]) if _v(ds, "InPlanePhaseEncodingDirection") == "COL" \
                    else (candidate[0], candidate[1])
                if rows % tr == 0 and cols % tc == 0:
                    tile = (tr, tc)
            if tile:
                break
    if tile is None:
        raise LoadError(f"{image.path.name}: a mosaic without NumberOfImagesInMosaic (0019,100A) or an acquisition "
                        f"matrix: the tile size is unknown")
    tiles = image.pixels()[0].reshape(rows // tile[0], tile[0], cols // tile[1], tile[1]).transpose(0, 2, 1, 3)
    filled = np.flatnonzero(tiles.reshape(-1, tile[0] * tile[1]).any(axis=1))
    if filled.size == 0:
        raise LoadError(f"{image.path.name}: the mosaic is empty")
    return int(filled[-1]) + 1, tile[0], tile[1]


def _records(images: list[_Image], kind: str) -> _Records:
    """The records of one series (see :class:`_Records`)."""
    if kind == "single":
        pos, keys = [], []
        for image in images:
            ds = image.ds
            normal = _normal(_v(ds, "ImageOrientationPatient"))
            ipp = _list(_v(ds, "ImagePositionPatient"))
            if normal is not None and len(ipp) == 3:
                pos.append(ipp[0] * normal[0] + ipp[1] * normal[1] + ipp[2] * normal[2])
            elif _v(ds, "SliceLocation") is not None:
                pos.append(float(_v(ds, "SliceLocation")))
            else:
                raise LoadError(f"{image.path.name}: no ImagePositionPatient or SliceLocation: the slice is unknown")
            keys.append((_num(_int(_v(ds, "TemporalPositionIdentifier"))), _num(_int(_v(ds, "AcquisitionNumber"))),
                         _num(_seconds(image.time)), _num(_int(_v(ds, "InstanceNumber")))))
        n = len(images)
        return _Records(np.round(np.asarray(pos, dtype=np.float64), 2), np.asarray(keys, dtype=np.float64).reshape(n, 4),
                        np.arange(n), np.zeros(n, dtype=np.int64))
    if kind == "mosaic":
        layout = _mosaic_layout(images[0])
        nz = layout[0]
        keys = np.array([(np.nan, _num(_int(_v(im.ds, "AcquisitionNumber"))), _num(_seconds(im.time)),
                          _num(_int(_v(im.ds, "InstanceNumber")))) for im in images], dtype=np.float64)
        n = len(images)
        return _Records(np.tile(np.arange(nz, dtype=np.float64), n), np.repeat(keys, nz, axis=0),
                        np.repeat(np.arange(n), nz), np.tile(np.arange(nz), n), layout)
    parts = []
    for i, image in enumerate(images):
        ds = image.ds
        cols = frame_items(ds)
        frames = len(cols["time"])
        shared = shared_values(ds)
        ipps = cols["ipp"]
        if np.isnan(ipps).all() and shared["ipp"] is not None and len(shared["ipp"]) == 3:
            ipps = np.tile(np.asarray(shared["ipp"], dtype=np.float64), (frames, 1))
        normals = np.empty((frames, 3))
        normal = _normal(shared["iop"])
        if normal is not None:
            normals[:] = normal
        else:
            for f in range(frames):
                frame_normal = _normal(cols["iop"][f]) if not np.isnan(cols["iop"][f]).any() else None
                normals[f] = frame_normal if frame_normal is not None else np.nan
        pos = np.einsum("fi,fi->f", ipps, normals)
        missing = np.isnan(pos)
        if missing.any():
            if np.isnan(cols["stack"][missing]).any():
                f = int(np.flatnonzero(missing & np.isnan(cols["stack"]))[0])
                raise LoadError(f"{image.path.name}: frame {f + 1} has no position")
            pos[missing] = cols["stack"][missing]
        temporal = cols["temporal"]
        file_time = _num(_seconds(image.time))
        texts = cols["time"]
        present = [t for t in texts if t]
        if present:
            first = dicom_datetime(min(present))
            if first is not None and (image.time is None or _seconds(first) < _seconds(image.time)):
                image.time = first
                file_time = _num(_seconds(first))
        if np.isnan(temporal).any() and present:       # frame times only matter without a temporal index
            times = np.array([_num(_seconds(dicom_datetime(t))) if t else file_time for t in texts])
        else:
            times = np.full(frames, file_time)
        keys = np.column_stack([temporal, np.full(frames, _num(_int(_v(ds, "AcquisitionNumber")))), times,
                                np.full(frames, _num(_int(_v(ds, "InstanceNumber"))))])
        parts.append((np.round(pos, 2), keys, np.full(frames, i), np.arange(frames)))
    return _Records(*(np.concatenate([p[k] for p in parts]) for k in range(4)))


def _time_order(rec: _Records) -> int | None:
    """Index of the first time key present and distinct within every slice position."""
    for k in range(4):
        col = rec.keys[:, k]
        if np.isnan(col).any():
            continue
        order = np.lexsort((col, rec.pos))
        p, c = rec.pos[order], col[order]
        if not np.any((p[1:] == p[:-1]) & (c[1:] == c[:-1])):
            return k
    return None


def _read(paths: Iterable[Path], notes: list[str]) -> list[_Image]:
    files = []
    for root in paths:
        root = Path(root)
        files += [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    images: list[_Image] = []
    not_dicom: list[str] = []
    no_pixels: Counter[str] = Counter()
    for path in files:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            not_dicom.append(f"{path.name} ({type(exc).__name__})")
            continue
        pixel = ds.get_item(0x7FE00010, keep_deferred=True)
        if pixel is not None and pixel.value is None and pixel.length not in (0, _UNDEFINED_LENGTH) and \
                getattr(pixel, "value_tell", 0) + pixel.length > path.stat().st_size:
            not_dicom.append(f"{path.name} (pixel data cut off)")      # a deferred value is not read yet
            continue
        if "PixelData" not in ds or "Rows" not in ds:
            sop = ds.get("SOPClassUID")
            no_pixels[getattr(sop, "name", None) or str(sop or "no SOP class")] += 1
            continue
        images.append(_Image(path, ds, _kind(ds), _time_of(ds)))
    if not_dicom:
        notes.append(f"skipped {len(not_dicom)} file(s) that are not DICOM: {', '.join(not_dicom[:5])}"
                     + (" ..." if len(not_dicom) > 5 else ""))
    for what, count in sorted(no_pixels.items()):
        notes.append(f"skipped {count} DICOM object(s) without pixel data ({what})")
    return images


def load_series(paths: Path | Iterable[Path], min_volumes: int = 3) -> Series:
    """The phantom series under ``paths`` (a directory, or several directories/files).
    Raises :class:`LoadError` when there is none."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    notes: list[str] = []
    images = _read(paths, notes)
    groups: dict[tuple, list[_Image]] = defaultdict(list)
    localizers: Counter[str] = Counter()
    for image in images:
        if _is_localizer(image.ds):
            localizers[_describe(image.ds)] += 1
        else:
            groups[_group_key(image)].append(image)
    for what, count in sorted(localizers.items()):
        notes.append(f"skipped localizer {what} ({count} image(s))")
    if not groups:
        raise LoadError("no images with pixel data in the input" + (f" ({'; '.join(notes)})" if notes else ""))

    ranked = []
    parsed: dict[tuple, _Records] = {}
    for key, members in groups.items():
        kind = members[0].kind
        try:
            parsed[key] = _records(members, kind)
        except LoadError as exc:
            notes.append(f"skipped {_describe(members[0].ds)}: {exc}")
            continue
        records = parsed[key]
        positions = len(np.unique(records.pos)) or 1
        volumes = len(records.pos) // positions
        original = kind == "mosaic" or \
            not str((_list(_v(members[0].ds, "ImageType")) or ["DERIVED"])[0]).upper().startswith("DERIVED")
        ranked.append((volumes, original, len(records.pos), key))
    if not ranked:
        raise LoadError("no readable image series in the input: " + "; ".join(notes))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]), reverse=True)
    chosen = ranked[0][3]
    for volumes, _, frames, key in ranked[1:]:
        notes.append(f"skipped {_describe(groups[key][0].ds)} ({frames} image(s), {volumes} volume(s)): "
                     f"not the phantom time series")
    members = groups[chosen]
    series = _assemble(members, parsed[chosen], notes)
    if series.volumes < min_volumes:
        raise LoadError(f"{_describe(members[0].ds)} has {series.volumes} volume(s); a stability analysis needs "
                        f"at least {min_volumes}")
    return series


def _assemble(members: list[_Image], rec: _Records, notes: list[str]) -> Series:
    kind = members[0].kind
    order = _time_order(rec)
    if order is not None:
        lex = np.lexsort((rec.keys[:, order], rec.pos))
        volume_key = rec.keys[:, order:order + 1]
    else:   # no single key: sort by all of them and require the result to be unambiguous
        filled = np.where(np.isnan(rec.keys), -np.inf, rec.keys)
        lex = np.lexsort((filled[:, 3], filled[:, 2], filled[:, 1], filled[:, 0], rec.pos))
        volume_key = filled
        sorted_keys, sorted_pos = filled[lex], rec.pos[lex]
        dup = np.flatnonzero((sorted_pos[1:] == sorted_pos[:-1]) & np.all(sorted_keys[1:] == sorted_keys[:-1], axis=1))
        if dup.size:
            name = members[rec.image[lex[dup[0]]]].path.name
            raise LoadError(f"two images at the same slice position and time in {_describe(members[0].ds)} "
                            f"(e.g. {name}): duplicate files or two runs in one series?")
    positions, z_of, counts = np.unique(rec.pos, return_inverse=True, return_counts=True)
    nt = int(counts.min())
    if counts.max() != nt:
        notes.append(f"incomplete run: slice positions have {nt}-{int(counts.max())} images; using the first {nt} "
                     f"volumes")
    z_sorted = z_of[lex]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    t_rank = np.arange(len(lex)) - starts[z_sorted]
    keep = t_rank < nt
    sel, t_idx, z_idx = lex[keep], t_rank[keep], z_sorted[keep]
    first = members[0]
    if kind == "mosaic":
        nz, tile_rows, tile_cols = rec.mosaic
        shape = (tile_rows, tile_cols)
    else:
        shape = (int(_v(first.ds, "Rows")), int(_v(first.ds, "Columns")))
        nz = len(positions)

    def frames_of(i: int) -> np.ndarray:
        arr = members[i].pixels()
        if kind == "mosaic":
            rows, cols = arr.shape[1:]
            k_r, k_c = rows // shape[0], cols // shape[1]
            arr = arr[0].reshape(k_r, shape[0], k_c, shape[1]).transpose(0, 2, 1, 3).reshape(-1, *shape)
        return arr

    images = rec.image[sel]
    if len(members) == 1 and kind == "enhanced" and sel.size == nt * nz:
        frames = frames_of(0)
        frame_of = rec.frame[sel]
        if np.array_equal(frame_of, t_idx * nz + z_idx) and frames.shape[0] == nt * nz:
            data = frames.reshape((nt, nz) + shape)       # frames already in time-major order: no copy
        elif np.array_equal(frame_of, z_idx * nt + t_idx) and frames.shape[0] == nt * nz:
            data = np.ascontiguousarray(frames.reshape((nz, nt) + shape).swapaxes(0, 1))
        else:
            data = None
        if data is not None:
            images = np.zeros(0, dtype=np.int64)
    else:
        data = None
    by_image = np.argsort(images, kind="stable")
    bounds = np.flatnonzero(np.diff(images[by_image])) + 1
    for group in (np.split(by_image, bounds) if images.size else []):
        i = int(images[group[0]])
        frames = frames_of(i)
        if data is None:
            data = np.empty((nt, nz) + shape, dtype=frames.dtype)
        data[t_idx[group], z_idx[group]] = frames[rec.frame[sel[group]]]
    at_first_pos = sel[z_idx == 0]
    at_first_pos = at_first_pos[np.argsort(t_idx[z_idx == 0])]
    volume_keys = [tuple(None if np.isnan(v) or np.isinf(v) else float(v) for v in volume_key[i])
                   for i in at_first_pos]
    used = sorted({int(i) for i in np.unique(rec.image[sel])})
    times = rec.keys[sel, 2]
    times = times[np.isfinite(times)]
    earliest = members[int(rec.image[sel[np.argmin(t_idx * nz + z_idx)]])]
    header = _header(earliest.ds)           # the first volume's (XA classic: its study)
    acq_time = None
    if times.size:
        acq_time = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=float(times.min()))
        zone = first.time
        if zone is not None and zone.tzinfo is not None:
            acq_time = acq_time.replace(tzinfo=zone.tzinfo)
    return Series(
        data=data, spacing_mm=_spacing(first.ds, positions.tolist(), kind), phase_encoding=_phase_encoding(first.ds),
        tr_seconds=_tr(first.ds), layout=kind if kind != "single" else "classic", header=header,
        acquisition_time=acq_time, files=[members[i].path for i in used], volume_keys=volume_keys,
        expected_volumes=_int(_v(first.ds, "NumberOfTemporalPositions")),
        study_count=len({str(_v(m.ds, "StudyInstanceUID", "")) for m in members}), notes=notes)


def _header(ds: Dataset) -> Dataset:
    """The image's attributes without pixel data and per-frame groups (not parsed)."""
    out = Dataset()
    for tag in ds.keys():
        if tag.group != 0x7FE0 and tag != 0x52009230:
            out[tag] = ds[tag]
    out.file_meta = getattr(ds, "file_meta", None) or Dataset()
    return out


def _spacing(ds: Dataset, positions: list[float], kind: str) -> tuple[float, float, float]:
    spacing = ds.get("PixelSpacing")
    measures = _shared(ds, "PixelMeasuresSequence")
    if spacing is None:
        spacing = shared_values(ds)["pixel_spacing"] if 0x52009229 in ds else None
    row, col = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    if kind != "mosaic" and len(positions) > 1:
        dz = float(np.median(np.diff(positions)))
    else:
        dz = None
        for source in (ds, measures):
            if source is not None and dz is None:
                dz = source.get("SpacingBetweenSlices") or source.get("SliceThickness")
        dz = float(dz) if dz else 1.0
    return abs(dz) or 1.0, row, col


def _phase_encoding(ds: Dataset) -> str | None:
    value = ds.get("InPlanePhaseEncodingDirection")
    if value is None:
        fov = _shared(ds, "MRFOVGeometrySequence")
        value = fov.get("InPlanePhaseEncodingDirection") if fov is not None else None
    value = str(value or "").upper()
    return {"COL": "COL", "COLUMN": "COL", "ROW": "ROW"}.get(value)


def _tr(ds: Dataset) -> float | None:
    value = ds.get("RepetitionTime")
    if value is None:
        timing = _shared(ds, "MRTimingAndRelatedParametersSequence")
        value = timing.get("RepetitionTime") if timing is not None else None
    try:
        return float(value) / 1000.0 if value else None
    except (TypeError, ValueError):
        return None
