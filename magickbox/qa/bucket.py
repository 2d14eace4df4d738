"""The ``ProcQA`` bucket: fBIRN stability metrics of one phantom series.

    python -m magickbox.qa.bucket INPUT OUTPUT [MEMORY] [--config FILE]

(the bucket's ``work.sh`` runs exactly this; in a container INPUT OUTPUT MEMORY are
``/input /output /memory``).  It writes into OUTPUT:

* ``measures.json`` — the metrics (schema in :mod:`magickbox.qa.measures`), named under
  ``hops.stability.<scanner>.<coil>.fbirn`` by default, time-stamped with the series'
  acquisition time;
* ``qa.json`` — everything else: per-slice values, the Weisskoff curve, the settings, the
  series layout and the notes;
* ``roi_timecourse.png``, ``weisskoff.png``, ``sfnr.png``, ``report.pdf``/``.png``/``.html``
  and optionally ``report_sc.dcm`` (see :mod:`magickbox.qa.report`);
* ``proc.json`` last — MagickBox's ``[{"success": "success|partial|failed", "message": ...}]``.

Exit code 0 whenever proc.json tells the outcome (bad input is ``failed`` with the reason);
2 for a configuration error, 1 for an unexpected error (proc.json says which).

**Configuration**: the ``"qa"`` object of the bucket's ``info.json`` (keys in
:class:`magickbox.qa.measures.QaConfig`), read from ``--config``, ``$HOPS_QA_CONFIG``,
``./info.json`` (the process runner starts buckets in their directory) or
``/root/storage/info.json`` (inside the container image).

**Siemens XA classic exports** give each volume its own StudyInstanceUID, so the node
makes one job per volume.  A job whose input holds a single volume of a series with more
volumes (NumberOfTemporalPositions, or ``qa.series_volumes``) keeps it in
``MEMORY/pending/<series>/`` and reports success without measures; the job that brings
the last volume analyses the whole series and clears the pending copy (copies older than
``qa.pending_days`` are removed; the node's archive keeps the originals).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

# one job, one core: multi-threaded BLAS only adds contention for these small products
# (set before numpy is imported by the modules below)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from .measures import ConfigError, QaConfig, load_config, write_json  # noqa: E402

__all__ = ["run", "main", "find_config"]

log = logging.getLogger("magickbox.qa")


def find_config(explicit: str | None = None) -> tuple[QaConfig, str | None]:
    """The bucket's QA configuration and where it came from (None: defaults)."""
    candidates = [explicit, os.environ.get("HOPS_QA_CONFIG"), "info.json", "/root/storage/info.json"]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        if not path.is_file():
            if candidate in (explicit, os.environ.get("HOPS_QA_CONFIG")):
                raise ConfigError(f"{candidate}: configuration file not found")
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return load_config(data.get("qa"), where=f"{path.name}: qa"), str(path)
    return QaConfig(), None


def _proc(output: Path, success: str, message: str) -> None:
    write_json(output / "proc.json", [{"success": success, "message": message}])


# -- Siemens XA classic: one study per volume ------------------------------------------------------

def _series_key(header) -> str:
    from .rawdicom import value
    parts = [str(value(header, k, "")) for k in ("StationName", "DeviceSerialNumber", "SeriesNumber",
                                                "SeriesDescription", "ProtocolName", "FrameOfReferenceUID",
                                                "AcquisitionDate", "Rows", "Columns")]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stash(series, memory: Path, config: QaConfig, notes: list[str]) -> tuple[Path, int]:
    """Copy the single volume into MEMORY/pending/<series>/; returns (that directory,
    volumes pending now)."""
    pending = memory / "pending"
    cutoff = time.time() - config.pending_days * 86400
    for old in pending.iterdir() if pending.is_dir() else []:
        if old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
            notes.append(f"removed an incomplete pending series older than {config.pending_days:g} days")
    target = pending / _series_key(series.header)
    volume = target / ("v" + hashlib.sha256(repr(series.volume_keys[0]).encode()).hexdigest()[:16])
    volume.mkdir(parents=True, exist_ok=True)
    for f in series.files:
        dest = volume / f.name
        tmp = volume / f".{f.name}.part"
        try:
            os.link(f, tmp)
        except OSError:
            shutil.copyfile(f, tmp)
        os.replace(tmp, dest)
    os.utime(target)
    return target, sum(1 for p in target.iterdir() if p.is_dir())


# -- the job ------------------------------------------------------------------------------------

def run(input_dir: Path, output: Path, memory: Path | None, config: QaConfig,
        report: bool = True) -> tuple[str, str]:
    """Analyse the phantom series in ``input_dir`` into ``output``; returns (success value,
    message) for proc.json.  ``report=False`` skips figures and report (measures and
    qa.json only).  Raises :class:`ConfigError` for configuration problems."""
    from .fbirn import AnalysisError, FbirnSettings, analyse
    from .loader import LoadError, load_series
    from .measures import build_measures, coil_name, scanner_name

    started = time.perf_counter()
    notes: list[str] = []
    try:
        series = load_series(input_dir, min_volumes=1)
    except LoadError as exc:
        return "failed", f"no phantom series: {exc}"
    notes += series.notes
    pending_dir = None
    if series.volumes == 1:
        expected = config.series_volumes or series.expected_volumes
        if not expected or expected <= 1 or memory is None:
            return "failed", ("the series has a single volume" + (
                "; if this is a Siemens XA classic export (one study per volume) set qa.series_volumes or send "
                "the series as enhanced or mosaic DICOM" if not expected else ""))
        with _locked(memory / "pending"):
            pending_dir, have = _stash(series, memory, config, notes)
            if have < expected:
                for n in notes:
                    log.info("note: %s", n)
                return "success", (f"volume kept: {have} of {expected} volumes of this series so far (one study "
                                   f"per volume, Siemens XA classic); the analysis runs when all have arrived")
            try:
                series = load_series(pending_dir, min_volumes=1)
            except LoadError as exc:
                return "failed", f"assembling the pending volumes failed: {exc}"
            notes += series.notes
            notes.append(f"assembled from {have} studies of one volume each (Siemens XA classic export)")
    if series.study_count > 1 and pending_dir is None:
        notes.append(f"the series spans {series.study_count} StudyInstanceUIDs (Siemens XA classic): merged by "
                     f"series number and description")
    if series.volumes < config.min_volumes:
        return "failed", (f"{series.volumes} volumes: at least {config.min_volumes} are needed "
                          f"(qa.min_volumes)")
    loaded = time.perf_counter()
    settings = FbirnSettings(roi_size=config.roi_size, skip_volumes=config.skip_volumes,
                             phase_encoding=config.phase_encoding or series.phase_encoding)
    try:
        result = analyse(series.data, series.spacing_mm, settings)
    except AnalysisError as exc:
        return "failed", f"cannot analyse the series: {exc}"
    analysed = time.perf_counter()
    notes += result.notes
    scanner = scanner_name(series.header, config, notes)
    coil = coil_name(series.header, config, notes)
    prefix = config.prefix.format(scanner=scanner, coil=coil) if config.prefix else None
    status, message = "success", ""
    if series.acquisition_time is None:
        status = "partial"
        message = "no acquisition date/time in the header: measures.json not written"
        when = None
    else:
        when = series.acquisition_time.isoformat()
        doc = build_measures(result, when, prefix, per_slice=config.per_slice)
        write_json(output / "measures.json", doc)
    nt, nz, ny, nx = series.data.shape
    info = {"scanner": scanner, "coil": coil, "time": when, "layout": series.layout,
            "matrix": f"{ny}x{nx}x{nz}", "tr": f"{series.tr_seconds:g} s" if series.tr_seconds else "unknown",
            "processed": _dt.datetime.now().isoformat(timespec="seconds"), "notes": notes}
    details = {
        "prefix": prefix, "scanner": scanner, "coil": coil, "time": when, "layout": series.layout,
        "shape": {"volumes": nt, "slices": nz, "rows": ny, "columns": nx}, "spacing_mm": series.spacing_mm,
        "tr_seconds": series.tr_seconds, "phase_encoding": result.phase_encoding,
        "settings": {"roi_size": config.roi_size, "skip_volumes": config.skip_volumes},
        "central_slice": result.central_slice + 1, "roi_center": result.roi_center,
        "measures": result.measures,
        "slices": {str(z + 1): v for z, v in sorted(result.slices.items())},
        "weisskoff": {"width": result.weisskoff_widths.tolist(), "cv_pct": result.weisskoff_cv.tolist()},
        "files": len(series.files), "notes": notes,
        "seconds": {"load": round(loaded - started, 3), "analysis": round(analysed - loaded, 3)},
    }
    write_json(output / "qa.json", details)
    if report:
        try:
            from .report import write_figures, write_report, write_secondary_capture
            write_figures(result, output, series.tr_seconds)
            pages = write_report(result, info, output, series.tr_seconds)
            if config.secondary_capture:
                write_secondary_capture(pages[1], series.header, output / "report_sc.dcm")
        except Exception as exc:      # figures are secondary: the measures stand
            log.exception("figures/report failed")
            status = "partial"
            message = f"measures written, but the figures/report failed: {exc}"
    if pending_dir is not None:
        shutil.rmtree(pending_dir, ignore_errors=True)
    for n in notes:
        log.info("note: %s", n)
    m = result.measures
    summary = (f"{scanner}/{coil}: SNR {m['snr']:.1f}, SFNR {m['sfnr']:.1f}, fluctuation "
               f"{m['fluctuation_pct']:.3f} %, drift {m['drift_pct']:.2f} %, RDC {m.get('rdc', float('nan')):.2f}, "
               f"ghost {m.get('ghost_pct', float('nan')):.2f} % ({nt} volumes, {series.layout})")
    log.info("%s", summary)
    return status, message or summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m magickbox.qa.bucket",
                                 description="fBIRN phantom QA bucket: INPUT OUTPUT [MEMORY]")
    ap.add_argument("input", nargs="?", default=os.environ.get("INPUT", "/input"))
    ap.add_argument("output", nargs="?", default=os.environ.get("OUTPUT", "/output"))
    ap.add_argument("memory", nargs="?", default=os.environ.get("MEMORY"))
    ap.add_argument("--config", help="info.json (its \"qa\" object) or a JSON file with a \"qa\" object")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    memory = Path(args.memory) if args.memory else None
    if memory is not None and "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = str(memory / ".matplotlib")
    try:
        config, source = find_config(args.config)
        log.info("fBIRN QA: configuration from %s", source or "defaults")
        status, message = run(Path(args.input), output, memory, config)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        _proc(output, "failed", f"configuration error: {exc}")
        return 2
    except Exception as exc:
        traceback.print_exc(file=sys.stdout)
        _proc(output, "failed", f"unexpected error: {type(exc).__name__}: {exc}")
        return 1
    log.info("%s: %s", status, message)
    _proc(output, status, message)
    return 0


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
