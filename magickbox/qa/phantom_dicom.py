"""DICOM writers for :mod:`magickbox.qa.phantom`: the same images in the layouts
scanners write (see :data:`magickbox.qa.phantom.LAYOUTS`).

Geometry: axial slices (ImageOrientationPatient 1\\0\\0\\0\\1\\0), slice ``z`` at
``z · (thickness + gap)`` mm, acquired in ascending order within each TR.  The patient
is ``PHANTOM^FBIRN`` (no real person).  Every file is Explicit VR Little Endian with File
Meta Information; the tests check the IODs with dciodvfy.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from .phantom import Phantom

__all__ = ["WRITERS"]

SIEMENS_CSA = "SIEMENS CSA HEADER"
SIEMENS_MR = "SIEMENS MR HEADER"


def _da(t: _dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: _dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _dt_str(t: _dt.datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")[:21]


class _Context:
    """UIDs and times shared by the files of one written series."""

    def __init__(self, phantom: Phantom):
        self.phantom = phantom
        self.spec = phantom.spec
        self.study_uid = generate_uid()
        self.series_uid = generate_uid()
        self.frame_of_reference = generate_uid()
        self.start = phantom.volume_times[0]
        self.spacing = self.spec.slice_thickness + self.spec.slice_gap

    def slice_time(self, t: int, z: int) -> _dt.datetime:
        return self.phantom.volume_times[t] + _dt.timedelta(seconds=self.spec.tr * z / self.spec.slices)

    def position(self, z: int) -> list[float]:
        half = self.spec.matrix * self.spec.pixel_spacing / 2
        return [-half, -half, round(z * self.spacing - (self.spec.slices - 1) * self.spacing / 2, 4)]


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HOPS_PHANTOM"
    return meta


def _common(ctx: _Context, sop_class: str, manufacturer: str, model: str, software: str,
            study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    """Patient, study, series, frame of reference, equipment and SOP common attributes."""
    spec = ctx.spec
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = _da(ctx.start)
    ds.StudyTime = ds.SeriesTime = _tm(ctx.start)
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.InstitutionName = "HOPS phantom lab"
    ds.ReferringPhysicianName = ""
    ds.StationName = spec.station_name
    ds.StudyDescription = "Phantom QA"
    ds.SeriesDescription = spec.series_description
    ds.ManufacturerModelName = model
    ds.PatientName = "PHANTOM^FBIRN"
    ds.PatientID = "PHANTOM-QA"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.DeviceSerialNumber = spec.device_serial
    ds.SoftwareVersions = software
    ds.ProtocolName = "fBIRN_stability"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid or ctx.study_uid
    ds.SeriesInstanceUID = series_uid or ctx.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.FrameOfReferenceUID = ctx.frame_of_reference
    ds.PositionReferenceIndicator = ""
    return ds


def _pixels(ds: Dataset, image: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image, dtype="<u2").tobytes()


def _mr_image(ds: Dataset, ctx: _Context, image_type: list[str]) -> None:
    """MR Image module (classic and mosaic files)."""
    spec = ctx.spec
    ds.ImageType = image_type
    ds.ScanningSequence = "EP"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = "FS"
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "epfid2d1_64"
    ds.SliceThickness = spec.slice_thickness
    ds.RepetitionTime = spec.tr * 1000.0
    ds.EchoTime = 30.0
    ds.NumberOfAverages = 1
    ds.ImagingFrequency = 123.25
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = 3.0
    ds.SpacingBetweenSlices = ctx.spacing
    ds.EchoTrainLength = 1
    ds.PercentSampling = 100.0
    ds.PercentPhaseFieldOfView = 100.0
    ds.PixelBandwidth = 2442.0
    ds.AcquisitionMatrix = [0, spec.matrix, spec.matrix, 0] if spec.phase_encoding == "COL" \
        else [spec.matrix, 0, 0, spec.matrix]
    ds.InPlanePhaseEncodingDirection = spec.phase_encoding
    ds.FlipAngle = 77.0
    ds.SAR = 0.1
    ds.NumberOfTemporalPositions = spec.volumes


def _plane(ds: Dataset, ctx: _Context, z: int) -> None:
    ds.ImagePositionPatient = ctx.position(z)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = ctx.position(z)[2]
    ds.PixelSpacing = [ctx.spec.pixel_spacing, ctx.spec.pixel_spacing]


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = _meta(ds.SOPClassUID, ds.SOPInstanceUID)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_slices(phantom: Phantom, outdir: Path, xa: bool) -> list[Path]:
    ctx = _Context(phantom)
    spec = ctx.spec
    files = []
    for t in range(spec.volumes):
        study_uid = generate_uid() if xa else None
        series_uid = generate_uid() if xa else None
        for z in range(spec.slices):
            if xa:
                ds = _common(ctx, MRImageStorage, "SIEMENS", "MAGNETOM Vida", "syngo MR XA30",
                             study_uid=study_uid, series_uid=series_uid)
                ds.AcquisitionNumber = t + 1
                ds.InstanceNumber = z + 1
            else:
                ds = _common(ctx, MRImageStorage, "HOPS", "Synthetic phantom", "hops-phantom 1")
                ds.AcquisitionNumber = 1
                ds.InstanceNumber = t * spec.slices + z + 1
            when = ctx.slice_time(t, z)
            ds.ContentDate = ds.AcquisitionDate = _da(when)
            ds.ContentTime = ds.AcquisitionTime = _tm(when)
            _mr_image(ds, ctx, ["ORIGINAL", "PRIMARY", "M", "ND"] if xa else ["ORIGINAL", "PRIMARY", "EPI"])
            ds.ReceiveCoilName = spec.coil
            ds.TemporalPositionIdentifier = t + 1
            _plane(ds, ctx, z)
            _pixels(ds, phantom.images[t, z])
            files.append(_save(ds, outdir / f"IM_{t + 1:04d}_{z + 1:03d}.dcm"))
    return files


def write_classic(phantom: Phantom, outdir: Path) -> list[Path]:
    return _write_slices(phantom, outdir, xa=False)


def write_xa_classic(phantom: Phantom, outdir: Path) -> list[Path]:
    return _write_slices(phantom, outdir, xa=True)


def _tile(volume: np.ndarray) -> tuple[np.ndarray, int]:
    """Slices (Z, N, N) tiled row by row into a k×k mosaic (k = ceil(sqrt(Z)))."""
    nz, n, _ = volume.shape
    k = math.ceil(math.sqrt(nz))
    mosaic = np.zeros((k * n, k * n), dtype=volume.dtype)
    for z in range(nz):
        r, c = divmod(z, k)
        mosaic[r * n:(r + 1) * n, c * n:(c + 1) * n] = volume[z]
    return mosaic, k


def _write_mosaics(phantom: Phantom, outdir: Path, xa: bool) -> list[Path]:
    ctx = _Context(phantom)
    spec = ctx.spec
    files = []
    for t in range(spec.volumes):
        mosaic, k = _tile(phantom.images[t])
        when = phantom.volume_times[t]
        if xa:
            ds = _common(ctx, SecondaryCaptureImageStorage, "SIEMENS", "MAGNETOM Vida", "syngo MR XA30")
            ds.ConversionType = "WSD"
            ds.PatientOrientation = ["L", "P"]
            ds.ImageType = ["DERIVED", "SECONDARY", "MOSAIC"]
            ds.PixelSpacing = [spec.pixel_spacing, spec.pixel_spacing]
            ds.AcquisitionMatrix = [0, spec.matrix, spec.matrix, 0] if spec.phase_encoding == "COL" \
                else [spec.matrix, 0, 0, spec.matrix]
            ds.InPlanePhaseEncodingDirection = spec.phase_encoding
            ds.RepetitionTime = spec.tr * 1000.0
            ds.SliceThickness = spec.slice_thickness
            ds.SpacingBetweenSlices = ctx.spacing
            ds.ReceiveCoilName = spec.coil
        else:
            ds = _common(ctx, MRImageStorage, "SIEMENS", "Prisma", "syngo MR E11")
            _mr_image(ds, ctx, ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"])
            _plane(ds, ctx, 0)
            # Siemens writes the position of the whole mosaic's corner
            shift = (k * spec.matrix - spec.matrix) / 2 * spec.pixel_spacing
            pos = ctx.position(0)
            ds.ImagePositionPatient = [pos[0] - shift, pos[1] - shift, pos[2]]
            csa = ds.private_block(0x0019, SIEMENS_CSA, create=True)
            csa.add_new(0x0A, "US", spec.slices)                               # NumberOfImagesInMosaic
            csa.add_new(0x0B, "DS", f"{spec.tr * 1000 / spec.slices:.4f}")    # SliceMeasurementDuration
            csa.add_new(0x29, "FD", [spec.tr * 1000 * z / spec.slices for z in range(spec.slices)])
            mr = ds.private_block(0x0051, SIEMENS_MR, create=True)
            mr.add_new(0x0F, "LO", spec.coil)                                  # coil element string
            ds.ReceiveCoilName = spec.coil
        ds.AcquisitionNumber = t + 1
        ds.InstanceNumber = t + 1
        ds.ContentDate = ds.AcquisitionDate = _da(when)
        ds.ContentTime = ds.AcquisitionTime = _tm(when)
        _pixels(ds, mosaic)
        files.append(_save(ds, outdir / f"MOSAIC_{t + 1:04d}.dcm"))
    return files


def write_mosaic(phantom: Phantom, outdir: Path) -> list[Path]:
    return _write_mosaics(phantom, outdir, xa=False)


def write_xa_mosaic(phantom: Phantom, outdir: Path) -> list[Path]:
    return _write_mosaics(phantom, outdir, xa=True)


# -- Enhanced MR ------------------------------------------------------------------------------

def _item(**kw) -> Dataset:
    ds = Dataset()
    for key, value in kw.items():
        setattr(ds, key, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _shared_groups(ctx: _Context) -> Dataset:
    spec = ctx.spec
    g = Dataset()
    g.PixelMeasuresSequence = Sequence([_item(PixelSpacing=[spec.pixel_spacing, spec.pixel_spacing],
                                              SliceThickness=spec.slice_thickness,
                                              SpacingBetweenSlices=ctx.spacing)])
    g.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    g.FrameAnatomySequence = Sequence([_item(
        AnatomicRegionSequence=Sequence([_code("69536005", "SCT", "Head")]), FrameLaterality="U")])
    g.PixelValueTransformationSequence = Sequence([_item(RescaleIntercept=0, RescaleSlope=1, RescaleType="US")])
    g.MRImageFrameTypeSequence = Sequence([_item(
        FrameType=["ORIGINAL", "PRIMARY", "FMRI", "NONE"], PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T2")])
    g.MRTimingAndRelatedParametersSequence = Sequence([_item(
        RepetitionTime=spec.tr * 1000.0, FlipAngle=77.0, EchoTrainLength=1, RFEchoTrainLength=0,
        GradientEchoTrainLength=1, GradientOutputType="DB_DT", GradientOutput=20.0,
        SpecificAbsorptionRateSequence=Sequence([_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                                       SpecificAbsorptionRateValue=0.1)]),
        OperatingModeSequence=Sequence([_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")]))])
    g.MRFOVGeometrySequence = Sequence([_item(
        InPlanePhaseEncodingDirection="COLUMN" if spec.phase_encoding == "COL" else "ROW",
        MRAcquisitionFrequencyEncodingSteps=spec.matrix,
        MRAcquisitionPhaseEncodingStepsInPlane=spec.matrix, PercentSampling=100.0,
        PercentPhaseFieldOfView=100.0)])
    g.MREchoSequence = Sequence([_item(EffectiveEchoTime=30.0)])
    g.MRModifierSequence = Sequence([_item(
        InversionRecovery="NO", FlowCompensation="NONE", T2Preparation="NO", SpatialPresaturation="NONE",
        PartialFourier="NO", ParallelAcquisition="NO", SpectrallySelectedExcitation="NONE")])
    g.MRImagingModifierSequence = Sequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE", TransmitterFrequency=123.25,
        PixelBandwidth=2442.0)])
    g.MRReceiveCoilSequence = Sequence([_item(
        ReceiveCoilName=spec.coil, ReceiveCoilManufacturerName="HOPS", ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO",
        MultiCoilDefinitionSequence=Sequence([_item(MultiCoilElementName="ALL", MultiCoilElementUsed="YES")]))])
    g.MRTransmitCoilSequence = Sequence([_item(
        TransmitCoilName="Body", TransmitCoilManufacturerName="HOPS", TransmitCoilType="BODY")])
    g.MRAveragesSequence = Sequence([_item(NumberOfAverages=1)])
    return g


def _enhanced(ctx: _Context, volumes: list[int], study_uid: str | None, series_uid: str | None,
              instance: int, manufacturer: str, model: str, software: str) -> Dataset:
    spec = ctx.spec
    ds = _common(ctx, EnhancedMRImageStorage, manufacturer, model, software, study_uid, series_uid)
    first = ctx.slice_time(volumes[0], 0)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "FMRI", "NONE"]
    ds.InstanceNumber = instance
    ds.ContentDate = _da(first)
    ds.ContentTime = _tm(first)
    ds.AcquisitionNumber = volumes[0] + 1 if len(volumes) == 1 else 1
    ds.AcquisitionDateTime = _dt_str(first)
    ds.AcquisitionDuration = spec.tr * len(volumes)
    ds.NumberOfFrames = len(volumes) * spec.slices
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T2"
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = 3.0
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "HOPS synthetic fBIRN phantom"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence([])
    # MR Pulse Sequence module
    ds.PulseSequenceName = "fBIRN_EPI"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "YES"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "FAT"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.NumberOfKSpaceTrajectories = 1
    # dimensions: stack position, then temporal position
    dim_uid = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position"),
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209128,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Temporal Position Index")])
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(ctx)])
    frames = []
    for t in volumes:
        for z in range(spec.slices):
            when = ctx.slice_time(t, z)
            content = _item(FrameAcquisitionNumber=t + 1, FrameReferenceDateTime=_dt_str(when),
                            FrameAcquisitionDateTime=_dt_str(when),
                            FrameAcquisitionDuration=spec.tr * 1000.0 / spec.slices, StackID="1",
                            InStackPositionNumber=z + 1, TemporalPositionIndex=t + 1,
                            DimensionIndexValues=[z + 1, t + 1])
            frames.append(_item(FrameContentSequence=Sequence([content]),
                                PlanePositionSequence=Sequence([_item(ImagePositionPatient=ctx.position(z))])))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def write_enhanced(phantom: Phantom, outdir: Path) -> list[Path]:
    ctx = _Context(phantom)
    spec = ctx.spec
    ds = _enhanced(ctx, list(range(spec.volumes)), None, None, 1, "Philips", "Ingenia", "5.7.1")
    _pixels(ds, phantom.images.reshape(-1, spec.matrix, spec.matrix))
    return [_save(ds, outdir / "ENHANCED_0001.dcm")]


def write_xa_enhanced(phantom: Phantom, outdir: Path) -> list[Path]:
    ctx = _Context(phantom)
    spec = ctx.spec
    files = []
    for t in range(spec.volumes):
        ds = _enhanced(ctx, [t], None, None, t + 1, "SIEMENS", "MAGNETOM Vida", "syngo MR XA30")
        _pixels(ds, phantom.images[t])
        files.append(_save(ds, outdir / f"ENHANCED_{t + 1:04d}.dcm"))
    return files


WRITERS: dict[str, Callable[[Phantom, Path], list[Path]]] = {
    "classic": write_classic, "mosaic": write_mosaic, "xa-mosaic": write_xa_mosaic,
    "xa-classic": write_xa_classic, "enhanced": write_enhanced, "xa-enhanced": write_xa_enhanced,
}
