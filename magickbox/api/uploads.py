"""Uploaded studies (``mb push``): a zip archive of DICOM files, checked before anything
in it is read.

The whole archive is **rejected** (HTTP 400, kept in ``<data>/quarantine/uploads/`` with
the reason) when any entry has an absolute path (``/x``, ``\\x``, ``C:x``), a ``..``
component, a backslash or NUL in its name, is a symbolic link, device, FIFO or socket,
is encrypted, uses an unknown compression method, or when the archive has more than
``max_entries`` entries or would unpack to more than ``max_unpacked`` bytes.  Nothing is
ever unpacked by name: each regular file is streamed from the archive into the node's
DICOM archive under its UIDs (see :meth:`NodeStore.archive_instance`), so no name in an
archive can reach the filesystem, a shell or a log.

A regular file that is not a DICOM Part 10 file (no ``DICM`` after the 128-byte
preamble) is skipped and reported, as is a DICOM file with missing or invalid UIDs.
"""
from __future__ import annotations

import re
import stat
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["UploadRejected", "UploadLimits", "check_archive", "read_file_meta", "NotPart10"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_SUPPORTED = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# VRs with a 2-byte reserved field and a 4-byte length in explicit VR encoding
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class UploadRejected(ValueError):
    """The archive as a whole is refused; the message names the entry and the reason."""


class NotPart10(ValueError):
    """A file that is not a DICOM Part 10 file (skipped, reported)."""


@dataclass(frozen=True)
class UploadLimits:
    max_upload: int = 4 << 30            # bytes of the request body (the zip)
    max_unpacked: int = 16 << 30         # bytes of all entries unpacked
    max_entries: int = 200_000


def _shown(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def check_archive(zf: zipfile.ZipFile, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    """The archive's regular files, or :class:`UploadRejected` naming the first unsafe entry."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UploadRejected(f"the archive has {len(infos)} entries; at most {limits.max_entries} are accepted")
    files, total = [], 0
    for info in infos:
        name = info.orig_filename if hasattr(info, "orig_filename") else info.filename
        shown = _shown(name)
        if not name or "\x00" in name:
            raise UploadRejected(f"entry {shown}: empty name or NUL in the name")
        if "\\" in name:
            raise UploadRejected(f"entry {shown}: backslash in the name (absolute or Windows path)")
        if name.startswith("/") or _DRIVE.match(name):
            raise UploadRejected(f"entry {shown}: absolute path")
        if ".." in name.split("/"):
            raise UploadRejected(f"entry {shown}: '..' in the path (would point outside the archive)")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = {stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device",
                    stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
                    stat.S_IFSOCK: "a socket"}.get(kind, f"a special file (mode {mode:o})")
            raise UploadRejected(f"entry {shown}: {what}; only regular files and directories are accepted")
        if info.flag_bits & 0x1:
            raise UploadRejected(f"entry {shown}: encrypted")
        if info.is_dir():
            continue
        if info.compress_type not in _SUPPORTED:
            raise UploadRejected(f"entry {shown}: unsupported compression method {info.compress_type}")
        total += info.file_size
        if total > limits.max_unpacked:
            raise UploadRejected(f"the archive unpacks to more than {limits.max_unpacked} bytes")
        files.append(info)
    return files


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_file_meta(stream: BinaryIO) -> tuple[str, str, str]:
    """Read the 128-byte preamble, ``DICM`` and the File Meta Information group from
    ``stream`` and leave it at the first byte of the data set.  Returns (Media Storage
    SOP Class UID, Media Storage SOP Instance UID, Transfer Syntax UID); raises
    :class:`NotPart10`."""
    head = _read_exact(stream, 132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise NotPart10("not a DICOM Part 10 file (no 'DICM' after the 128-byte preamble)")
    raw = _read_exact(stream, 12)
    if len(raw) < 12 or raw[:6] != b"\x02\x00\x00\x00UL" or raw[6:8] != b"\x04\x00":
        raise NotPart10("the File Meta Information does not start with its group length (0002,0000)")
    rest = struct.unpack("<I", raw[8:12])[0]
    if rest > 1 << 16:
        raise NotPart10("the File Meta Information group length is implausible")
    group_bytes = _read_exact(stream, rest)
    if len(group_bytes) < rest:
        raise NotPart10("the File Meta Information is cut off")
    values: dict[int, bytes] = {}
    _parse_group(group_bytes, values)

    def text(element: int, what: str) -> str:
        value = values.get(element)
        if value is None:
            raise NotPart10(f"the File Meta Information has no {what}")
        return value.decode("ascii", "replace").rstrip("\x00 ")
    return (text(0x0002, "Media Storage SOP Class UID"), text(0x0003, "Media Storage SOP Instance UID"),
            text(0x0010, "Transfer Syntax UID"))


def _parse_group(data: bytes, values: dict[int, bytes]) -> None:
    pos = 0
    while pos + 8 <= len(data):
        group, element, vr = struct.unpack("<HH2s", data[pos:pos + 6])
        if group != 0x0002:
            raise NotPart10(f"element ({group:04X},{element:04X}) inside the File Meta Information group")
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise NotPart10("the File Meta Information is cut off")
            length = struct.unpack("<I", data[pos + 8:pos + 12])[0]
            start = pos + 12
        else:
            length = struct.unpack("<H", data[pos + 6:pos + 8])[0]
            start = pos + 8
        if start + length > len(data):
            raise NotPart10("the File Meta Information is cut off")
        values[element] = data[start:start + length]
        pos = start + length
