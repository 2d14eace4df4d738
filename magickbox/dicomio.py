"""Reading just enough of a received data set: its header up to the tags we need.

The C-STORE data set arrives without File Meta Information, in the negotiated transfer
syntax.  :func:`read_header` parses elements only up to the highest tag the node needs
(UIDs, series-level tags, tags the classification rules read), never the pixel data.
Raises :class:`HeaderError` for anything that is not a readable DICOM data set.
"""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.filereader import read_dataset
from pydicom.tag import Tag

from .series import SERIES_TAGS
from .store import SpoolBuffer

__all__ = ["HeaderError", "HeaderReader", "read_header_file"]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_DATA = 0x7FE00010
_BASE_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SpecificCharacterSet")


class HeaderError(ValueError):
    """The received bytes are not a readable DICOM data set."""


class HeaderReader:
    """Parses headers for a fixed set of tags (base UIDs, series tags, ``extra_tags``)."""

    def __init__(self, extra_tags: Iterable[tuple[int, int]] = ()):
        tags = {Tag(tag_for_keyword(k)) for k in (*_BASE_TAGS, *SERIES_TAGS)}
        tags |= {Tag(g, e) for g, e in extra_tags}
        self.tags = sorted(tags)
        self.max_tag = max(self.tags)

    def _stop(self, tag: int, vr: str | None, length: int) -> bool:
        return tag > self.max_tag or tag == _PIXEL_DATA

    def read(self, buffer: SpoolBuffer | bytes, transfer_syntax: str) -> Dataset:
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


def read_header_file(path: Path) -> Dataset:
    """Header of an archived file (for rebuilding series records)."""
    return dcmread(path, stop_before_pixels=True)
