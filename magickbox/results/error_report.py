"""MagickBox's ``sendErrorAsDcm``: the end of a failed job's ``processing.log`` as a DICOM
Encapsulated PDF, in the job's study, so the PACS shows why the processing failed.

The PDF is written here (one or more Courier pages of plain text; no PDF library needed).
Patient and study attributes are copied from one of the job's input files, so the report
lands in the same study; the series and instance UIDs are new.  Without a readable input
file the report is not made (:class:`ValueError` says why).
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Iterable

__all__ = ["ENCAPSULATED_PDF", "log_tail", "text_pdf", "write_error_report"]

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
LINES_PER_PAGE = 70
MAX_LINE = 120
_COPIED = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription")


def log_tail(path: Path, max_lines: int = 200, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``max_lines`` lines of a log (at most its last ``max_bytes`` bytes)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError as exc:
        return [f"(processing.log could not be read: {exc.strerror or exc})"]
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]                  # the first line is cut
    return lines[-max_lines:]


def _pdf_text(line: str) -> bytes:
    line = line.expandtabs(4)[:MAX_LINE]
    raw = line.encode("latin-1", "replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)").replace(b"\r", b"")


def text_pdf(title: str, lines: Iterable[str]) -> bytes:
    """A PDF of ``title`` and ``lines`` in 8 pt Courier, A4 pages of 70 lines."""
    lines = [title, ""] + list(lines)
    pages = [lines[i:i + LINES_PER_PAGE] for i in range(0, len(lines), LINES_PER_PAGE)] or [[title]]
    objects: list[bytes] = []
    font_id = 3
    page_ids = []
    for n, page in enumerate(pages):
        content = b"BT /F1 8 Tf 10 TL 36 806 Td " + b" ".join(b"(" + _pdf_text(t) + b") Tj T*" for t in page) + b" ET"
        page_id, content_id = 4 + 2 * n, 5 + 2 * n
        page_ids.append(page_id)
        objects.append((f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {content_id} 0 R"
                        f" /Resources << /Font << /F1 {font_id} 0 R >> >> >>").encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    head = [b"<< /Type /Catalog /Pages 2 0 R >>",
            ("<< /Type /Pages /Kids [" + " ".join(f"{p} 0 R" for p in page_ids) + f"] /Count {len(pages)} >>").encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(head + objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref)
    return bytes(out)


def write_error_report(target: Path, job_id: int, status: str, message: str, log_path: Path,
                       study_files: Iterable[Path]) -> Path:
    """Write the error report of a job to ``target`` (a DICOM Part 10 file) and return it.
    ``study_files``: input files to copy patient and study attributes from (the first
    readable one is used).  Raises ValueError when none can be read."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    source = None
    for path in study_files:
        try:
            source = pydicom.dcmread(path, stop_before_pixels=True)
            break
        except Exception:  # noqa: BLE001 - any unreadable file: try the next one
            continue
    if source is None:
        raise ValueError("no readable input file to take the patient and study from")
    now = _dt.datetime.now()
    title = f"HOPS magickbox job {job_id}: {status}" + (f" - {message}" if message else "")
    pdf = text_pdf(title, ["End of processing.log:", ""] + log_tail(log_path))
    ds = Dataset()
    for keyword in _COPIED:       # SpecificCharacterSet first, so names keep their characters
        try:
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        except Exception:  # noqa: BLE001 - a broken attribute of the input is left out
            continue
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DOC"
    ds.SeriesNumber = 9999
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"HOPS error report job {job_id}"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = f"HOPS job {job_id} {status}"[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.Manufacturer = "HOPS"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(target)
    return target
