r"""fBIRN phantom stability metrics (Friedman & Glover, JMRI 23:827-839, 2006).

Input: a magnitude time series ``I[t, z, y, x]`` of a phantom (``t`` volumes, ``z``
slices, ``y`` rows, ``x`` columns).  The first ``skip`` volumes (default 2, before the
magnetisation reaches steady state) are dropped; ``T`` below is the number of volumes
analysed and ``t = 0 … T-1`` their index.  All metrics are computed on the *central
slice* ``zc = Z // 2`` (the headline values) and, where the ROI lies inside the phantom,
on every other slice as well (``slice.NN.*``, ``NN`` = 1-based slice number in order of
position along the slice normal).

**ROI.**  A square of ``n × n`` pixels (``n = roi_size``, default 21) centred on the
phantom: the centre ``(cy, cx)`` is the rounded centroid of the phantom mask (mean image
of the central slice above half its 99th percentile).  A width-``n`` ROI spans rows
``cy - n//2 … cy - n//2 + n - 1`` (and the same for columns), so ROIs of width
1, 2, …, n are nested.

**Detrending.**  ``fit(v)`` is the least-squares 2nd-order polynomial in ``t`` through a
time series ``v``; ``resid(v) = v - fit(v)``; ``sd(v) = sqrt(Σ_t resid(v)² / (T - 3))``
(unbiased for white noise after a 3-parameter fit).

Definitions (``⟨·⟩_ROI`` is the mean over the ROI pixels, ``mean_t`` over time):

* **Signal image** ``S(x) = mean_t I(t, x)``; **mean** ``= ⟨S⟩_ROI`` (signal summary value).
* **Temporal fluctuation noise image** ``F(x) = sd(I(·, x))``;
  **SFNR image** ``S(x) / F(x)``; **SFNR** ``= ⟨S / F⟩_ROI``.
* **Static spatial noise image** ``D(x) = Σ_{t even} I(t, x) − Σ_{t odd} I(t, x)``
  (odd/even volume difference; signal and any drift common to all pixels cancel in its
  spatial variance); **SNR** ``= mean / sqrt(var_ROI(D) / T)`` with ``var_ROI`` the sample
  variance (ddof 1) over the ROI pixels.  For white noise of standard deviation σ,
  ``var(D) = T σ²`` and SNR = mean / σ.
* **ROI time series** ``m(t) = ⟨I(t, ·)⟩_ROI``.
* **Percent fluctuation** ``fluctuation_pct = 100 · sd(m) / mean_t(m)``.
* **Drift** (from the fit) ``drift_pct = 100 · (max_t fit(m) − min_t fit(m)) / mean_t(m)``;
  **raw drift** ``drift_raw_pct = 100 · (max_t m − min_t m) / mean_t(m)`` (some sites
  quote this one; it includes the noise extremes).
* **Weisskoff analysis**: for ROI widths ``k = 1 … n``, ``m_k(t)`` the mean over the
  width-``k`` ROI and ``CV(k) = 100 · sd(m_k) / mean_t(m_k)`` (percent).  Uncorrelated
  noise gives ``CV(k) = CV(1) / k``; spatially correlated fluctuation flattens the curve.
  **Radius of decorrelation** ``rdc = CV(1) / CV(n)`` (pixels; equals ``n`` for white
  noise, smaller when fluctuations are correlated over the ROI).
* **Ghost** (N/2 Nyquist ghost, on the mean image ``S`` of a slice): phantom mask ``P``
  (``S`` above half the phantom level), ghost region ``G`` = ``P`` shifted by half the
  matrix along the phase-encoding direction (wrapping), minus ``P`` dilated by 2 pixels
  and eroded by 1 pixel at its own edges; background ``B`` = everything farther than
  3 pixels from both ``P`` and its shifted copy.
  ``ghost_pct = 100 · (⟨S⟩_G − ⟨S⟩_B) / ⟨S⟩_{P eroded by 2}``.  On magnitude images the
  background mean is the Rayleigh noise floor (σ·√(π/2)) and the ghost region's mean is
  Rician, so low ghosts read slightly low; the phantom generator's truth accounts for it.
  The phase-encoding direction comes from the DICOM header (``COL`` = along the columns,
  i.e. image rows shift); without it the direction with the larger ghost is used.
* **Centre of mass** ``c(t)`` of each whole volume (intensity-weighted, in mm along the
  image x (columns), y (rows) and z (slices) axes): ``cmass.<axis>.disp_mm =
  max_t c − min_t c``; ``cmass.<axis>.drift_mm`` = slope of the least-squares line
  through ``c(t)`` times ``T − 1`` (the displacement over the run).

Everything is vectorised numpy: one pass over the data for the mean image, two for the
centre of mass (integer sums for integer data), the rest works on the ROI columns only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FbirnSettings", "FbirnResult", "analyse", "detrend_basis", "roi_bounds", "roi_ring_index",
           "phantom_center", "ghost_regions", "ghost_percent", "AnalysisError", "SLICE_METRICS"]

#: per-slice metric names (``slice.NN.<name>``)
SLICE_METRICS = ("mean", "snr", "sfnr", "fluctuation_pct", "drift_pct", "drift_raw_pct", "ghost_pct")


class AnalysisError(ValueError):
    """The series cannot be analysed (too few volumes, no phantom, ROI outside the image)."""


@dataclass(frozen=True)
class FbirnSettings:
    """``roi_size``: ROI width in pixels (also the largest Weisskoff width);
    ``skip_volumes``: volumes dropped at the start; ``phase_encoding``: ``"COL"``,
    ``"ROW"`` or None (from the header, else the direction with the larger ghost);
    ``slice_fraction``: a slice gets per-slice metrics when its ROI mean is at least this
    fraction of the central slice's and no ROI pixel is below half of it."""

    roi_size: int = 21
    skip_volumes: int = 2
    phase_encoding: str | None = None
    slice_fraction: float = 0.5

    def validate(self) -> None:
        if not isinstance(self.roi_size, int) or not 3 <= self.roi_size <= 255:
            raise ValueError(f"roi_size: expected an integer 3-255, found {self.roi_size!r}")
        if not isinstance(self.skip_volumes, int) or self.skip_volumes < 0:
            raise ValueError(f"skip_volumes: expected an integer >= 0, found {self.skip_volumes!r}")
        if self.phase_encoding not in (None, "COL", "ROW"):
            raise ValueError(f"phase_encoding: expected COL, ROW or none, found {self.phase_encoding!r}")


@dataclass
class FbirnResult:
    """Headline ``measures`` (central slice), ``slices`` {0-based slice index: {metric:
    value}}, and the arrays the figures need."""

    measures: dict[str, float]
    slices: dict[int, dict[str, float]]
    weisskoff_widths: np.ndarray
    weisskoff_cv: np.ndarray
    roi_series: np.ndarray          # m(t) of the central slice
    roi_fit: np.ndarray             # fit(m)
    signal_image: np.ndarray        # S of the central slice
    sfnr_image: np.ndarray          # S / F of the central slice
    noise_image: np.ndarray         # D of the central slice
    regions: dict[str, np.ndarray]  # phantom / ghost / background masks of the central slice
    cmass_mm: np.ndarray            # (T, 3): x, y, z
    central_slice: int
    roi_center: tuple[int, int]
    roi_size: int
    volumes: int
    skipped: int
    phase_encoding: str | None
    notes: list[str] = field(default_factory=list)


def detrend_basis(n: int) -> np.ndarray:
    """Orthonormal basis (n × 3) of the polynomials 1, t, t² on t = 0 … n-1."""
    t = np.linspace(-1.0, 1.0, n)
    q, _ = np.linalg.qr(np.stack([np.ones(n), t, t * t], axis=1))
    return q


def _fit_resid(series: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, residual) of each column of ``series`` (T × M)."""
    fit = basis @ (basis.T @ series)
    return fit, series - fit


def _residual_sd(centred: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``sd`` of each column of mean-free data (T × M) without forming the residuals:
    Σ resid² = Σ x² − Σ (basisᵀx)² (the constant is already removed)."""
    coef = basis[:, 1:].T @ centred
    ss = np.einsum("tm,tm->m", centred, centred) - np.einsum("km,km->m", coef, coef)
    return np.sqrt(np.maximum(ss, 0.0) / (centred.shape[0] - 3))


def _sd(resid: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("t...,t...->...", resid, resid) / (resid.shape[0] - 3))


def roi_bounds(center: int, width: int) -> tuple[int, int]:
    """[start, stop) of a width-``width`` ROI around ``center`` (nested for 1, 2, 3 …)."""
    start = center - width // 2
    return start, start + width


def roi_ring_index(width: int) -> np.ndarray:
    """(width × width) array: the smallest nested ROI width containing each pixel of the
    width-``width`` ROI (1 at the centre)."""
    start, _ = roi_bounds(0, width)
    d = np.arange(start, start + width)
    n = np.where(d >= 0, 2 * d + 1, -2 * d)
    return np.maximum(n[:, None], n[None, :])


def phantom_center(mean_image: np.ndarray) -> tuple[int, int]:
    """Rounded centroid of the phantom mask (above half the 99th percentile)."""
    level = np.percentile(mean_image, 99)
    mask = mean_image > 0.5 * level
    if level <= 0 or mask.sum() < 9:
        raise AnalysisError("no phantom found in the central slice (the mean image is empty)")
    ys, xs = np.nonzero(mask)
    return int(round(ys.mean())), int(round(xs.mean()))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)² square over the last two axes (no wrap)."""
    out = mask.copy()
    for axis in (-2, -1):
        src = out.copy()
        n = src.shape[axis]
        for r in range(1, radius + 1):
            if r >= n:
                break
            lo = [slice(None)] * src.ndim
            hi = [slice(None)] * src.ndim
            lo[axis], hi[axis] = slice(r, None), slice(None, -r)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~_dilate(~mask, radius)


def ghost_regions(mean_image: np.ndarray, phase_axis: int, level: float) -> dict[str, np.ndarray]:
    """Phantom, ghost and background masks of a slice's mean image, or of a stack of
    slices (..., rows, columns) at once (see the module docstring); ``phase_axis`` 0 =
    phase encoding along the columns (rows shift)."""
    phantom = mean_image > 0.5 * level
    axis = phase_axis - 2
    shift = mean_image.shape[axis] // 2
    shifted = np.roll(phantom, shift, axis=axis)
    ghost = _erode(shifted, 1) & ~_dilate(phantom, 2)
    background = ~_dilate(phantom | shifted, 3)
    return {"phantom": _erode(phantom, 2), "ghost": ghost, "background": background}


def ghost_percent(mean_image: np.ndarray, phase_axis: int, level: float) -> np.ndarray | float:
    """``ghost_pct`` of a slice (a float) or of each slice of a stack (an array); NaN
    where a region is too small (< 10 pixels)."""
    regions = ghost_regions(mean_image, phase_axis, level)
    img = mean_image.reshape(-1, *mean_image.shape[-2:])
    means = {}
    for name, mask in regions.items():
        m = mask.reshape(img.shape)
        count = m.sum(axis=(1, 2))
        total = np.where(m, img, 0.0).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            means[name] = np.where(count >= 10, total / np.maximum(count, 1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ghost = 100.0 * (means["ghost"] - means["background"]) / means["phantom"]
    return float(ghost[0]) if mean_image.ndim == 2 else ghost


def _phase_axis(name: str) -> int:
    return 0 if name == "COL" else 1


def analyse(data: np.ndarray, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
            settings: FbirnSettings | None = None) -> FbirnResult:
    """fBIRN metrics of ``data[t, z, y, x]`` (any real dtype; uint16 is read without a
    float copy of the whole series).  ``spacing_mm`` = (slice, row, column) spacing.
    Raises :class:`AnalysisError` when the series cannot be analysed."""
    settings = settings or FbirnSettings()
    settings.validate()
    if data.ndim != 4:
        raise AnalysisError(f"expected a 4-D series (time, slice, row, column), found shape {data.shape}")
    total, nz, ny, nx = data.shape
    skip = settings.skip_volumes
    nt = total - skip
    if nt < 10:
        raise AnalysisError(f"{total} volumes: at least {skip + 10} are needed ({skip} skipped, 10 analysed)")
    n = settings.roi_size
    d = data[skip:]
    notes: list[str] = []

    # integer data is summed in integers (several times faster than float64 reductions)
    acc = np.uint64 if d.dtype.kind == "u" and d.dtype.itemsize <= 2 else np.float64
    if d.dtype.kind == "u" and d.dtype.itemsize <= 2 and nt < 65536:
        acc = np.uint32
    mean_image = d.sum(axis=0, dtype=acc) / float(nt)                    # (Z, Y, X)
    zc = nz // 2
    cy, cx = phantom_center(mean_image[zc])
    y0, y1 = roi_bounds(cy, n)
    x0, x1 = roi_bounds(cx, n)
    if y0 < 0 or x0 < 0 or y1 > ny or x1 > nx:
        raise AnalysisError(f"a {n}x{n} ROI around the phantom centre ({cy}, {cx}) does not fit in the "
                            f"{ny}x{nx} image")
    basis = detrend_basis(nt)
    alternating = np.where(np.arange(nt) % 2 == 0, 1.0, -1.0)

    # -- per-pixel metrics on the ROI columns of every slice ---------------------------
    roi = np.ascontiguousarray(d[:, :, y0:y1, x0:x1], dtype=np.float64)  # (T, Z, n, n)
    flat = roi.reshape(nt, -1)
    signal = flat.mean(axis=0)
    fluct = _residual_sd(flat - signal, basis)
    with np.errstate(divide="ignore", invalid="ignore"):
        sfnr_pix = np.where(fluct > 0, signal / fluct, np.nan).reshape(nz, n, n)
    static = (alternating @ flat).reshape(nz, n * n)
    signal_z = signal.reshape(nz, n * n).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_z = signal_z / np.sqrt(static.var(axis=1, ddof=1) / nt)
    sfnr_z = sfnr_pix.reshape(nz, -1).mean(axis=1)

    # -- ROI time series per slice -------------------------------------------------------
    series = roi.mean(axis=(2, 3))                                        # (T, Z)
    fit, res = _fit_resid(series, basis)
    series_mean = series.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fluct_z = 100.0 * _sd(res) / series_mean
        drift_z = 100.0 * (fit.max(axis=0) - fit.min(axis=0)) / series_mean
        drift_raw_z = 100.0 * (series.max(axis=0) - series.min(axis=0)) / series_mean

    # -- Weisskoff (central slice) -------------------------------------------------------
    centre = roi[:, zc]                                                   # (T, n, n)
    rings = roi_ring_index(n)
    widths = np.arange(1, n + 1)
    ring_sums = np.stack([centre[:, rings == k].sum(axis=1) for k in widths], axis=1)   # (T, n)
    cumulative = np.cumsum(ring_sums, axis=1) / (widths ** 2)
    _, wres = _fit_resid(cumulative, basis)
    cv = 100.0 * _sd(wres) / cumulative.mean(axis=0)
    rdc = float(cv[0] / cv[-1]) if cv[-1] > 0 else float("nan")

    # -- ghost per slice -------------------------------------------------------------------
    level = float(np.percentile(mean_image[zc], 99))
    phase = settings.phase_encoding
    if phase is None:
        candidates = {p: ghost_percent(mean_image[zc], _phase_axis(p), level) for p in ("COL", "ROW")}
        phase = max(candidates, key=lambda p: -np.inf if np.isnan(candidates[p]) else candidates[p])
        notes.append(f"phase-encoding direction not in the header: using {phase} (the larger ghost)")
    axis = _phase_axis(phase)
    ghost_z = ghost_percent(mean_image, axis, level)

    # -- centre of mass of every volume -----------------------------------------------------
    # two passes: per-slice totals (T, Z) and the projection over slices (T, Y, X)
    per_slice_mass = np.add.reduce(d.reshape(total - skip, nz, ny * nx), axis=2, dtype=acc).astype(np.float64) \
        if d[0].flags["C_CONTIGUOUS"] else d.sum(axis=(2, 3), dtype=acc).astype(np.float64)   # (T, Z)
    yx = d.sum(axis=1, dtype=acc).astype(np.float64)                      # (T, Y, X)
    mass = per_slice_mass.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cz = per_slice_mass @ np.arange(nz) / mass * spacing_mm[0]
        cyy = yx.sum(axis=2) @ np.arange(ny) / mass * spacing_mm[1]
        cxx = yx.sum(axis=1) @ np.arange(nx) / mass * spacing_mm[2]
    cmass = np.stack([cxx, cyy, cz], axis=1)                              # (T, 3): x, y, z
    tline = np.arange(nt) - (nt - 1) / 2.0
    slopes = (tline @ (cmass - cmass.mean(axis=0))) / (tline @ tline)

    # -- which slices get per-slice metrics ----------------------------------------------------
    roi_means = roi.mean(axis=0)                                          # (Z, n, n)
    central_level = signal_z[zc]
    sensible = [z for z in range(nz)
                if signal_z[z] >= settings.slice_fraction * central_level
                and roi_means[z].min() >= 0.5 * settings.slice_fraction * central_level]
    per_slice: dict[int, dict[str, float]] = {}
    for z in sensible:
        per_slice[z] = {"mean": float(signal_z[z]), "snr": float(snr_z[z]), "sfnr": float(sfnr_z[z]),
                        "fluctuation_pct": float(fluct_z[z]), "drift_pct": float(drift_z[z]),
                        "drift_raw_pct": float(drift_raw_z[z]), "ghost_pct": float(ghost_z[z])}
        per_slice[z] = {k: v for k, v in per_slice[z].items() if np.isfinite(v)}
    if len(sensible) < nz:
        notes.append(f"per-slice metrics for {len(sensible)} of {nz} slices (the others have no phantom "
                     f"under the ROI)")

    measures = {
        "mean": float(signal_z[zc]), "snr": float(snr_z[zc]), "sfnr": float(sfnr_z[zc]),
        "fluctuation_pct": float(fluct_z[zc]), "drift_pct": float(drift_z[zc]),
        "drift_raw_pct": float(drift_raw_z[zc]), "rdc": rdc, "ghost_pct": float(ghost_z[zc]),
        "volumes": float(nt), "slices": float(nz), "roi_size": float(n),
    }
    for i, name in enumerate("xyz"):
        measures[f"cmass.{name}.disp_mm"] = float(cmass[:, i].max() - cmass[:, i].min())
        measures[f"cmass.{name}.drift_mm"] = float(slopes[i] * (nt - 1))
    for k, value in zip(widths, cv):
        measures[f"weisskoff.cv.{k:02d}"] = float(value)
    measures = {k: v for k, v in measures.items() if np.isfinite(v)}

    # -- central slice images for the figures -------------------------------------------------
    whole = d[:, zc].reshape(nt, ny * nx).astype(np.float64)
    _, wr = _fit_resid(whole, basis)
    fl = _sd(wr)
    sig_img = mean_image[zc]
    with np.errstate(divide="ignore", invalid="ignore"):
        sfnr_img = np.where(fl > 0, sig_img.ravel() / fl, 0.0).reshape(ny, nx)
    noise_img = (alternating @ whole).reshape(ny, nx)
    regions = ghost_regions(sig_img, axis, level)

    return FbirnResult(
        measures=measures, slices=per_slice, weisskoff_widths=widths, weisskoff_cv=cv,
        roi_series=series[:, zc].copy(), roi_fit=fit[:, zc].copy(), signal_image=sig_img,
        sfnr_image=sfnr_img, noise_image=noise_img, regions=regions, cmass_mm=cmass, central_slice=zc,
        roi_center=(cy, cx), roi_size=n, volumes=nt, skipped=skip, phase_encoding=phase, notes=notes)
