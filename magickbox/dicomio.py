"""Reading just enough of a received data set: its header up to the tags we need.

The C-STORE data set arrives without File Meta Information, in the negotiated transfer
syntax.  :func:`read_header` parses elements only up to the highest tag the node needs
(UIDs, series-level tags, tags the classification rules read), never the pixel data.
Raises :class:`HeaderError` for anything that is not a readable DICOM data set.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Iterable

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag

from .series import SERIES_TAGS
from .store import SpoolBuffer

__all__ = ["HeaderError", "HeaderReader", "check_complete"]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_DATA = 0x7FE00010
_BASE_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SpecificCharacterSet")


class HeaderError(ValueError):
    """The received bytes are not a readable DICOM data set."""


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UID_TAGS = (0x00080018, 0x0020000D, 0x0020000E)   # SOP Instance, Study, Series UID


class _NeedMore(Exception):
    """The scan ran past the bytes it was given."""


def _scan(data: bytes, implicit: bool, little: bool, wanted: frozenset[int], max_tag: int,
          ) -> list[RawDataElement]:
    """Walk the top-level elements of an uncompressed-header data set and return the raw
    elements whose tags are in ``wanted``; stops after ``max_tag`` or at Pixel Data.
    Sequences (also of undefined length) are skipped.  Raises :class:`_NeedMore` when
    ``data`` ends inside the header and ``ValueError`` on malformed structure."""
    order = "<" if little else ">"
    tag_fmt = struct.Struct(order + "HH")
    u16 = struct.Struct(order + "H")
    u32 = struct.Struct(order + "I")
    end = len(data)
    found: list[RawDataElement] = []

    def header(pos: int) -> tuple[int, bytes | None, int, int]:
        if pos + 8 > end:
            raise _NeedMore
        group, elem = tag_fmt.unpack_from(data, pos)
        tag = (group << 16) | elem
        if implicit or group == 0xFFFE:
            return tag, None, u32.unpack_from(data, pos + 4)[0], pos + 8
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise _NeedMore
            return tag, vr, u32.unpack_from(data, pos + 8)[0], pos + 12
        return tag, vr, u16.unpack_from(data, pos + 6)[0], pos + 8

    def skip_undefined(pos: int) -> int:
        """``pos`` is just after an undefined-length element header; return the position
        after its sequence delimitation item."""
        while True:
            tag, _, length, pos = header(pos)
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise ValueError(f"expected an item in a sequence, found tag {tag:08X}")
            if length != _UNDEFINED:
                pos += length
                continue
            while True:               # an item of undefined length: its elements, then ItemEnd
                tag, _, length, pos = header(pos)
                if tag == _ITEM_END:
                    break
                pos = skip_undefined(pos) if length == _UNDEFINED else pos + length

    pos = 0
    while pos < end:
        start = pos
        tag, vr, length, pos = header(pos)
        if tag > max_tag or tag == _PIXEL_DATA:
            break
        if length == _UNDEFINED:
            pos = skip_undefined(pos)
            continue
        if pos + length > end:
            if tag in wanted:
                raise _NeedMore
            pos += length
            continue
        if tag in wanted:
            found.append(RawDataElement(BaseTag(tag), vr.decode("ascii") if vr else None, length,
                                        data[pos:pos + length], start, implicit, little))
        pos += length
    return found


class HeaderReader:
    """Parses headers for a fixed set of tags (base UIDs, series tags, ``extra_tags``)."""

    def __init__(self, extra_tags: Iterable[tuple[int, int]] = ()):
        tags = {Tag(tag_for_keyword(k)) for k in (*_BASE_TAGS, *SERIES_TAGS)}
        tags |= {Tag(g, e) for g, e in extra_tags}
        self.tags = sorted(tags)
        self.max_tag = max(self.tags)
        self._wanted = frozenset(int(t) for t in self.tags)

    def _stop(self, tag: int, vr: str | None, length: int) -> bool:
        return tag > self.max_tag or tag == _PIXEL_DATA

    def read(self, buffer: SpoolBuffer | bytes, transfer_syntax: str) -> Dataset:
        """The header as a pydicom Dataset (values converted lazily on access)."""
        if transfer_syntax != DEFLATED:
            implicit = transfer_syntax == IMPLICIT_LE
            little = transfer_syntax != EXPLICIT_BE
            for size in (65536, None):
                if size is None:
                    data = buffer.getvalue() if isinstance(buffer, SpoolBuffer) else buffer
                else:
                    data = buffer.head(size) if isinstance(buffer, SpoolBuffer) else buffer[:size]
                try:
                    elements = _scan(data, implicit, little, self._wanted, int(self.max_tag))
                except _NeedMore:
                    if size is None or len(data) < size:
                        break          # truncated: let pydicom explain below
                    continue
                except (ValueError, struct.error):
                    break
                if sum(1 for e in elements if e.tag in _UID_TAGS) < len(_UID_TAGS):
                    break              # odd encoding (e.g. VR mismatch): pydicom copes better
                ds = Dataset({e.tag: e for e in elements})
                ds.set_original_encoding(implicit, little)
                return ds
        return self._read_with_pydicom(buffer, transfer_syntax)

    def _read_with_pydicom(self, buffer: SpoolBuffer | bytes, transfer_syntax: str) -> Dataset:
        if isinstance(buffer, SpoolBuffer):
            if buffer.spilled:
                fh = buffer.spool_file()
                fh.seek(0)
                data: io.BufferedIOBase = fh  # type: ignore[assignment]
            else:
                data = io.BytesIO(b"".join(buffer.chunks()))
        else:
            data = io.BytesIO(buffer)
        try:
            if transfer_syntax == DEFLATED:
                raw = data.read(64 * 1024 * 1024)
                data = io.BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, 16 * 1024 * 1024))
            implicit = transfer_syntax == IMPLICIT_LE
            little = transfer_syntax != EXPLICIT_BE
            ds = read_dataset(data, implicit, little, stop_when=self._stop, specific_tags=self.tags)
            # touch the values we rely on so broken encodings surface here
            for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                getattr(ds, keyword, None)
            return ds
        except HeaderError:
            raise
        except Exception as exc:  # pydicom raises many kinds of errors on garbage
            raise HeaderError(f"not a readable DICOM data set ({type(exc).__name__}: {str(exc)[:200]})") from None



#: deepest sequence nesting walked (real data sets nest a few levels)
_MAX_DEPTH = 64


def check_complete(buffer: SpoolBuffer | bytes, transfer_syntax: str) -> None:
    """Raise :class:`HeaderError` unless the data set's top-level elements (sequences and
    encapsulated pixel data walked item by item) exactly fill ``buffer``: a data set cut
    short — its last value, an element header, a sequence without its delimiter — or with
    a length field past its end is not a complete instance and must not be acknowledged;
    nor is one that starts with File Meta Information (a DICOM file sent as a data set).
    Reads only element headers (a few bytes per element).  Little endian data sets that
    walk cleanly in the other VR encoding pass (the header reader copes with that sender
    bug too).  Deflated data sets are not checked (their end is zlib's to find)."""
    if transfer_syntax == DEFLATED:
        return
    implicit = transfer_syntax == IMPLICIT_LE
    order = "<" if transfer_syntax != EXPLICIT_BE else ">"
    if isinstance(buffer, SpoolBuffer) and buffer.spilled:
        fd = buffer.spool_file().fileno()
        size = buffer.size

        def read_at(pos: int, n: int) -> bytes:
            return os.pread(fd, n, pos)
    else:
        data = buffer.getvalue() if isinstance(buffer, SpoolBuffer) else buffer
        size = len(data)

        def read_at(pos: int, n: int) -> bytes:
            return data[pos:pos + n]

    def header(pos: int, end: int, implicit_vr: bool) -> tuple[int, bytes | None, int, int]:
        raw = read_at(pos, 12)
        if end - pos < 8 or len(raw) < 8:
            raise HeaderError(f"the data set ends inside an element header at byte {pos} (of {size})")
        group, elem = struct.unpack_from(order + "HH", raw)
        tag = (group << 16) | elem
        if implicit_vr or group == 0xFFFE:
            return tag, None, struct.unpack_from(order + "I", raw, 4)[0], pos + 8
        vr = raw[4:6]
        if vr in _LONG_VRS:
            if end - pos < 12 or len(raw) < 12:
                raise HeaderError(f"the data set ends inside an element header at byte {pos} (of {size})")
            return tag, vr, struct.unpack_from(order + "I", raw, 8)[0], pos + 12
        return tag, vr, struct.unpack_from(order + "H", raw, 6)[0], pos + 8

    def value_end(tag: int, start: int, length: int, end: int) -> int:
        if start + length > end:
            raise HeaderError(f"the data set ends inside element ({tag >> 16:04X},{tag & 0xFFFF:04X}): "
                              f"{length} bytes declared at byte {start}, {end - start} left")
        return start + length

    def elements(pos: int, end: int, implicit_vr: bool, depth: int, until_item_end: bool) -> int:
        """Walk elements from ``pos``: to ``end`` exactly, or to an item delimiter."""
        if depth > _MAX_DEPTH:
            raise HeaderError(f"sequences nested deeper than {_MAX_DEPTH} levels")
        while pos < end or until_item_end:
            tag, vr, length, pos = header(pos, end, implicit_vr)
            if tag == _ITEM_END and until_item_end:
                return pos
            if length == _UNDEFINED:
                pos = items(tag, vr, pos, end, implicit_vr or vr == b"UN", depth + 1)
            else:
                pos = value_end(tag, pos, length, end)
        return pos

    def items(tag: int, vr: bytes | None, pos: int, end: int, implicit_vr: bool, depth: int) -> int:
        """Walk the items of an undefined-length element up to its sequence delimiter."""
        fragments = tag == _PIXEL_DATA
        while True:
            item, _, length, pos = header(pos, end, implicit_vr)
            if item == _SEQ_END:
                return pos
            if item != _ITEM:
                raise HeaderError(f"expected an item in ({tag >> 16:04X},{tag & 0xFFFF:04X}), found tag "
                                  f"({item >> 16:04X},{item & 0xFFFF:04X}) at byte {pos - 8}")
            if length != _UNDEFINED:
                pos = value_end(item, pos, length, end)
            elif fragments:
                raise HeaderError(f"a pixel data fragment of undefined length at byte {pos - 8}")
            else:
                pos = elements(pos, end, implicit_vr, depth, until_item_end=True)

    if size >= 2 and struct.unpack_from(order + "H", read_at(0, 2))[0] == 0x0002:
        raise HeaderError("the data set starts with File Meta Information (group 0002): a DICOM file was sent "
                          "where its data set belongs")
    try:
        elements(0, size, implicit, 0, until_item_end=False)
    except HeaderError:
        if transfer_syntax not in (IMPLICIT_LE, EXPLICIT_LE):
            raise
        try:                 # a sender that negotiated one VR encoding and used the other (pydicom copes)
            elements(0, size, not implicit, 0, until_item_end=False)
        except HeaderError:
            pass
        else:
            return
        raise
