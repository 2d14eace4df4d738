"""Figures, the one-page report and its DICOM Secondary Capture (matplotlib, Agg).

Files written into the output directory:

* ``roi_timecourse.png`` — the central-slice ROI mean over time with its quadratic fit;
* ``weisskoff.png`` — CV against ROI width (log-log) with the 1/width line of
  uncorrelated noise, RDC marked;
* ``sfnr.png`` — signal, static spatial noise (odd − even) and SFNR images of the central
  slice, with the ROI and the ghost/background regions outlined;
* ``report.pdf`` / ``report.png`` — one A4 page: identification, the headline values,
  the three plots, per-slice values, notes; ``report.html`` the same as a web page;
* ``report_sc.dcm`` (optional) — ``report.png`` as a Secondary Capture Image in the
  phantom's study (new series), so routing can return it to the PACS.
"""
from __future__ import annotations

import datetime as _dt
import html
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .fbirn import FbirnResult

__all__ = ["write_figures", "write_report", "write_secondary_capture"]

_SUMMARY = [("mean", "Mean signal", "{:.1f}"), ("snr", "SNR", "{:.1f}"), ("sfnr", "SFNR", "{:.1f}"),
            ("fluctuation_pct", "Percent fluctuation", "{:.4f} %"), ("drift_pct", "Drift (fit)", "{:.3f} %"),
            ("drift_raw_pct", "Drift (raw)", "{:.3f} %"), ("rdc", "RDC", "{:.2f} px"),
            ("ghost_pct", "Ghost", "{:.3f} %"), ("cmass.x.disp_mm", "Centre of mass x disp.", "{:.3f} mm"),
            ("cmass.y.disp_mm", "Centre of mass y disp.", "{:.3f} mm"),
            ("cmass.z.disp_mm", "Centre of mass z disp.", "{:.3f} mm")]


def _pyplot():
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = str(Path(tempfile.gettempdir()) / f"hops-mpl-{os.getuid()}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _timecourse(ax, result: FbirnResult, tr: float | None) -> None:
    t = (np.arange(result.volumes) + result.skipped) * (tr or 1.0)
    ax.plot(t, result.roi_series, ".", ms=3, color="#1f77b4", label="ROI mean")
    ax.plot(t, result.roi_fit, "-", color="#d62728", lw=1.5, label="2nd-order fit")
    ax.set_xlabel("time (s)" if tr else "volume")
    ax.set_ylabel("signal")
    m = result.measures
    ax.set_title(f"ROI time course: fluctuation {m.get('fluctuation_pct', float('nan')):.3f} %, "
                 f"drift {m.get('drift_pct', float('nan')):.2f} %", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def _weisskoff(ax, result: FbirnResult) -> None:
    w, cv = result.weisskoff_widths, result.weisskoff_cv
    ax.loglog(w, cv, "o-", ms=3, label="measured")
    ax.loglog(w, cv[0] / w, "--", color="gray", label="1/width (uncorrelated)")
    ax.set_xlabel("ROI width (pixels)")
    ax.set_ylabel("CV (%)")
    ax.set_title(f"Weisskoff plot: RDC {result.measures.get('rdc', float('nan')):.2f} px", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())


def _roi_box(ax, result: FbirnResult) -> None:
    from matplotlib.patches import Rectangle
    cy, cx = result.roi_center
    start_y, start_x = cy - result.roi_size // 2, cx - result.roi_size // 2
    ax.add_patch(Rectangle((start_x - 0.5, start_y - 0.5), result.roi_size, result.roi_size, fill=False,
                           edgecolor="yellow", lw=1))


def _images(axes, result: FbirnResult, fig) -> None:
    panels = [("Signal (mean) image", result.signal_image, "gray"),
              ("Static spatial noise (odd − even)", result.noise_image, "gray"),
              ("SFNR image", result.sfnr_image, "inferno")]
    for ax, (title, image, cmap) in zip(axes, panels):
        finite = image[np.isfinite(image)]
        vmax = np.percentile(finite, 99.5) if finite.size else 1
        vmin = np.percentile(finite, 0.5) if title.startswith("Static") and finite.size else 0
        im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        _roi_box(ax, result)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    regions = result.regions
    axes[0].contour(regions["ghost"], levels=[0.5], colors="cyan", linewidths=0.6)
    axes[0].contour(regions["background"], levels=[0.5], colors="lime", linewidths=0.6)


def write_figures(result: FbirnResult, outdir: Path, tr: float | None) -> list[Path]:
    plt = _pyplot()
    out = []
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    _timecourse(ax, result, tr)
    fig.tight_layout()
    out.append(outdir / "roi_timecourse.png")
    fig.savefig(out[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    _weisskoff(ax, result)
    fig.tight_layout()
    out.append(outdir / "weisskoff.png")
    fig.savefig(out[-1])
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), dpi=100)
    _images(axes, result, fig)
    fig.suptitle(f"Central slice {result.central_slice + 1}: ROI {result.roi_size}x{result.roi_size} (yellow), "
                 f"ghost region (cyan), background (green)", fontsize=9)
    fig.tight_layout()
    out.append(outdir / "sfnr.png")
    fig.savefig(out[-1])
    plt.close(fig)
    return out


def _fmt(fmt: str, value: Any) -> str:
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return "–"


def write_report(result: FbirnResult, info: dict[str, Any], outdir: Path, tr: float | None) -> list[Path]:
    """report.pdf, report.png (one A4 page) and report.html."""
    plt = _pyplot()
    fig = plt.figure(figsize=(8.27, 11.69), dpi=100)
    gs = fig.add_gridspec(6, 3, height_ratios=[0.8, 1.6, 1.5, 1.3, 1.5, 0.5], hspace=0.7, wspace=0.45,
                          left=0.08, right=0.95, top=0.96, bottom=0.03)
    head = fig.add_subplot(gs[0, :])
    head.axis("off")
    head.text(0, 1, "fBIRN phantom stability report", fontsize=15, weight="bold", va="top")
    lines = [f"Scanner {info.get('scanner')} · coil {info.get('coil')} · acquired {info.get('time')}",
             f"{info.get('layout')} series: {result.volumes} volumes analysed (+{result.skipped} skipped), "
             f"{info.get('matrix')}, TR {info.get('tr')}",
             f"ROI {result.roi_size}x{result.roi_size} px at row {result.roi_center[0]}, column "
             f"{result.roi_center[1]} of slice {result.central_slice + 1}; phase encoding "
             f"{result.phase_encoding}",
             f"HOPS magickbox.qa · processed {info.get('processed')}"]
    head.text(0, 0.62, "\n".join(lines), fontsize=8, va="top", family="monospace")
    table_ax = fig.add_subplot(gs[1, 0:1])
    table_ax.axis("off")
    rows = [[label, _fmt(fmt, result.measures.get(key))] for key, label, fmt in _SUMMARY]
    tbl = table_ax.table(cellText=rows, colLabels=["metric", "value"], loc="upper left", cellLoc="left",
                         colWidths=[0.68, 0.42])
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(7)
    tbl.scale(1, 1.05)
    weisskoff_ax = fig.add_subplot(gs[1, 1:])
    weisskoff_ax.set_position(weisskoff_ax.get_position().translated(0.06, 0).expanded(0.9, 1.0))
    _weisskoff(weisskoff_ax, result)
    _timecourse(fig.add_subplot(gs[2, :]), result, tr)
    _images([fig.add_subplot(gs[3, i]) for i in range(3)], result, fig)
    slice_ax = fig.add_subplot(gs[4, :])
    slice_ax.axis("off")
    keys = [("snr", "SNR", "{:.1f}"), ("sfnr", "SFNR", "{:.1f}"), ("fluctuation_pct", "fluct. %", "{:.3f}"),
            ("drift_pct", "drift %", "{:.2f}"), ("ghost_pct", "ghost %", "{:.2f}")]
    slices = sorted(result.slices)
    if len(slices) > 18:          # keep the page readable: every n-th slice plus the central one
        step = int(np.ceil(len(slices) / 18))
        slices = sorted(set(slices[::step]) | {result.central_slice})
    if slices:
        cell = [[str(z + 1)] + [_fmt(fmt, result.slices[z].get(k)) for k, _, fmt in keys] for z in slices]
        st = slice_ax.table(cellText=cell, colLabels=["slice"] + [label for _, label, _ in keys],
                            loc="upper center", cellLoc="center")
        st.auto_set_font_size(False)
        st.set_fontsize(6)
        st.scale(1, 0.85)
    notes_ax = fig.add_subplot(gs[5, :])
    notes_ax.axis("off")
    notes = info.get("notes") or []
    notes_ax.text(0, 1, "Notes:\n" + ("\n".join(f"• {n}" for n in notes[:6]) if notes else "• none"),
                  fontsize=6.5, va="top", wrap=True)
    pdf, png = outdir / "report.pdf", outdir / "report.png"
    fig.savefig(pdf)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    page = outdir / "report.html"
    page.write_text(_html(result, info))
    return [pdf, png, page]


def _html(result: FbirnResult, info: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(label)}</td><td>{esc(_fmt(fmt, result.measures.get(key)))}</td></tr>"
                   for key, label, fmt in _SUMMARY)
    slices = "".join(
        "<tr>" + f"<td>{z + 1}</td>" + "".join(f"<td>{esc(_fmt('{:.3f}', v.get(k)))}</td>"
                                              for k in ("snr", "sfnr", "fluctuation_pct", "drift_pct", "ghost_pct"))
        + "</tr>" for z, v in sorted(result.slices.items()))
    notes = "".join(f"<li>{esc(n)}</li>" for n in info.get("notes") or []) or "<li>none</li>"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>fBIRN phantom stability report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}td,th{{padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>fBIRN phantom stability report</h1>
<p>Scanner <b>{esc(str(info.get('scanner')))}</b>, coil <b>{esc(str(info.get('coil')))}</b>, acquired
{esc(str(info.get('time')))}; {esc(str(info.get('layout')))} series, {result.volumes} volumes analysed
(+{result.skipped} skipped), {esc(str(info.get('matrix')))}; ROI {result.roi_size}x{result.roi_size} on slice
{result.central_slice + 1}; phase encoding {esc(str(result.phase_encoding))}.</p>
<table><tr><th>metric</th><th>value</th></tr>{rows}</table>
<p><img src="roi_timecourse.png" alt="ROI time course"> <img src="weisskoff.png" alt="Weisskoff plot"></p>
<p><img src="sfnr.png" alt="signal, static noise and SFNR images"></p>
<h2>Per slice</h2><table><tr><th>slice</th><th>SNR</th><th>SFNR</th><th>fluctuation %</th><th>drift %</th>
<th>ghost %</th></tr>{slices}</table>
<h2>Notes</h2><ul>{notes}</ul>
<p>Definitions: Friedman &amp; Glover, JMRI 2006 (see magickbox/qa/fbirn.py). Processed {esc(str(info.get('processed')))}.</p>
</body></html>
"""


def write_secondary_capture(png: Path, header, out: Path) -> Path:
    """``png`` as an RGB Secondary Capture Image in the phantom's study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )
    plt = _pyplot()
    rgba = plt.imread(str(png))
    rgb = (np.clip(rgba[..., :3], 0, 1) * 255).round().astype(np.uint8)
    now = _dt.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = header.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                "IssuerOfPatientID", "OtherPatientIDs"):
        if key in header:
            setattr(ds, key, header.get(key))
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if key not in ds:
            setattr(ds, key, "")
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SeriesNumber = int(header.get("SeriesNumber") or 0) + 9000
    ds.SeriesDescription = "fBIRN QA report"
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.Manufacturer = "HOPS"
    ds.SecondaryCaptureDeviceManufacturer = "HOPS"
    ds.SecondaryCaptureDeviceManufacturerModelName = "magickbox.qa"
    ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.PatientOrientation = ""
    ds.Laterality = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "fBIRN stability report of the phantom series"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)
    return out
