"""The parameters of a synthetic phantom (:mod:`magickbox.qa.phantom`), importable
without numpy (the CLI builds its options from them)."""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

__all__ = ["PhantomSpec", "LAYOUTS", "MAX_VALUE"]

LAYOUTS = ("classic", "mosaic", "xa-mosaic", "xa-classic", "enhanced", "xa-enhanced")

MAX_VALUE = 4095          # 12 bits stored


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines a synthetic series (units in the field comments)."""

    matrix: int = 64                     # pixels, square
    slices: int = 27
    volumes: int = 200                   # including the dummy volumes
    tr: float = 2.0                      # s
    pixel_spacing: float = 3.4375        # mm (22 cm field of view at 64)
    slice_thickness: float = 4.0         # mm
    slice_gap: float = 1.0               # mm
    radius: float = 0.3                  # cylinder radius, fraction of the field of view
    signal: float = 2000.0               # S0
    noise: float = 5.0                   # σ per channel
    fluctuation: float = 1.0             # τ, signal units
    drift_linear: float = -2.0           # % of S0 over the run
    drift_quadratic: float = 1.0         # % of S0 over the run
    ghost: float = 3.0                   # % N/2 ghost
    phase_encoding: str = "COL"          # COL: phase encoding along the columns (ghost shifts rows)
    dummy_volumes: int = 2
    roi_size: int = 21                   # the ROI the exact noise is built for
    exact: bool = True
    seed: int = 1
    # identity written into the DICOM headers
    station_name: str = "HOPSPHANTOM"
    device_serial: str = "99999"
    coil: str = "HEAD_32"
    start: str = "2025-01-07T07:31:46"   # acquisition start, scanner local time
    series_number: int = 5
    series_description: str = "fBIRN stability phantom (HOPS synthetic)"

    @property
    def analysed(self) -> int:
        return self.volumes - self.dummy_volumes

    @property
    def radius_px(self) -> float:
        return self.radius * self.matrix

    @property
    def center(self) -> int:
        return self.matrix // 2

    def phantom_slices(self) -> list[int]:
        """0-based indices of the slices inside the cylinder."""
        return list(range(1, self.slices - 1)) if self.slices >= 5 else list(range(self.slices))

    def validate(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"{key}: {why}")
        if self.matrix < 32 or self.matrix > 512:
            raise bad("matrix", f"expected 32-512, found {self.matrix}")
        if self.slices < 1:
            raise bad("slices", "expected at least 1")
        if self.dummy_volumes < 0:
            raise bad("dummy_volumes", "expected >= 0")
        if self.exact and self.analysed < self.roi_size + 8:
            raise bad("volumes", f"too few: {self.analysed} analysed volumes; exact noise for a "
                                 f"{self.roi_size} ROI needs at least {self.roi_size + 8}")
        if self.analysed < 1:
            raise bad("volumes", "expected more volumes than dummy volumes")
        if self.phase_encoding not in ("COL", "ROW"):
            raise bad("phase_encoding", f"expected COL or ROW, found {self.phase_encoding!r}")
        half = self.roi_size // 2
        if (half + 1) * math.sqrt(2) > self.radius_px:
            raise bad("radius", f"the {self.roi_size}x{self.roi_size} ROI does not fit inside a cylinder of "
                                f"radius {self.radius_px:.1f} px")
        if self.matrix / 2 - self.radius_px <= half + 1 and self.ghost:
            raise bad("radius", "the N/2 ghost would overlap the ROI: make the cylinder smaller")
        if not 0 <= self.ghost < 50:
            raise bad("ghost", "expected a percentage 0-50")
        if self.noise <= 0 or self.signal <= 0 or self.fluctuation < 0:
            raise bad("noise", "noise and signal must be > 0, fluctuation >= 0")
        peak = self.signal * (1 + self.ghost / 100) * 1.6 + 6 * self.noise
        if peak > MAX_VALUE:
            raise bad("signal", f"signal {self.signal:g} would overflow 12 bits")
        _dt.datetime.fromisoformat(self.start)


