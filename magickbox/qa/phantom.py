r"""A synthetic fMRI phantom with known truth, written as a DICOM series.

The object is a cylinder (axis along the slices; the first and last slice lie outside it
when there are five or more) of uniform signal ``S0`` in a square field of view, plus an
N/2 Nyquist ghost: a copy of the cylinder shifted by half the matrix along the
phase-encoding direction with ``ghost`` percent of its signal.  Each volume ``t`` is

    I(t, x) = | O(x) · (s(t) + τ/S0 · g(t)) + σ · (w_r(t, x) + i · w_i(t, x)) |

rounded to integers (12 bits stored):

* ``s(t) = 1 + (drift_linear · u + drift_quadratic · u²) / 100`` with ``u = 0 … 1`` over
  the analysed volumes — a known quadratic drift; the first ``dummy_volumes`` volumes are
  brighter (approach to steady state) and are the ones the analysis skips;
* ``g(t)``: a spatially uniform fluctuation of standard deviation ``τ`` (``fluctuation``,
  signal units), e.g. scanner gain instability — the part of the noise that is correlated
  across the ROI and sets the radius of decorrelation;
* ``w_r``, ``w_i``: white Gaussian noise of standard deviation ``σ`` (``noise``) in the
  real and imaginary channel; the magnitude makes the background a Rayleigh noise floor.

With ``exact=True`` (the default) the real-channel noise inside the analysis ROI of each
phantom slice is *moment-matched*: it is still white in distribution, but its realised
second moments on the quantities the fBIRN metrics use are exactly the nominal ones —
the odd/even difference image has spatial variance ``T σ²`` over the ROI; the mean over
every nested ROI of width ``k`` is orthogonal to the quadratic trend and to ``g`` and has
residual variance ``σ²/k²``; ``g`` is orthogonal to the trend with residual variance 1.
So SNR, percent fluctuation, drift, the Weisskoff curve and RDC come out at their
analytic values up to magnitude and rounding effects (well under 1 %) instead of the several
percent of sampling scatter a 21×21 ROI has (3.4 % for SNR, 5 % for a 200-point
fluctuation estimate).  With ``exact=False`` the noise is plain i.i.d. Gaussian.

The analytic values (:func:`truth`), valid when the analysis skips ``dummy_volumes``
volumes and uses a ``roi_size`` ROI (``T`` = analysed volumes, ``s̄`` = mean of ``s``):

* mean ``= S0 · s̄``; SNR ``= mean / σ``; SFNR ``= mean / sqrt(σ² + τ²)``;
* ``CV(k) = 100 · sqrt(τ² + σ²/k²) / mean``; percent fluctuation ``= CV(roi_size)``;
  RDC ``= CV(1) / CV(roi_size)``;
* drift ``= 100 · S0 · (max s − min s) / mean``; raw drift: the same on the realised
  (pre-magnitude) ROI mean series;
* ghost: the fBIRN ghost measure of the *expected* mean image (Rician means:
  ``E|A + n| = σ √(π/2) L½(−A²/2σ²)``), next to the nominal ``ghost_fraction_pct``;
* centre-of-mass displacement 0 (the phantom does not move).

Layouts (:data:`LAYOUTS`): ``classic`` (one MR Image Storage file per slice and volume,
GE-like: temporal position identifiers, ReceiveCoilName), ``mosaic`` (Siemens VE: one MR
Image per volume, slices tiled, CSA ``NumberOfImagesInMosaic``, coil in (0051,100F)),
``xa-mosaic`` (Siemens XA: the mosaic as a Secondary Capture without CSA header),
``xa-classic`` (Siemens XA "interoperability" classic DICOM: one file per slice, and a
new StudyInstanceUID — and series UID — for every volume), ``enhanced`` (one Enhanced MR
Image with every frame, Philips-like) and ``xa-enhanced`` (one Enhanced MR Image per
volume).
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .fbirn import detrend_basis, ghost_percent, roi_bounds, roi_ring_index
from .spec import LAYOUTS, MAX_VALUE, PhantomSpec

__all__ = ["PhantomSpec", "Phantom", "LAYOUTS", "generate", "truth", "write_series", "rician_mean"]

@dataclass
class Phantom:
    """A generated series: ``images[t, z, y, x]`` (uint16) and its truth."""

    spec: PhantomSpec
    images: np.ndarray
    truth: dict[str, Any]
    volume_times: list[_dt.datetime] = field(default_factory=list)


def rician_mean(amplitude: np.ndarray | float, sigma: float) -> np.ndarray:
    """E|A + n_r + i·n_i| for n ~ N(0, σ²) per channel (the Rice mean), vectorised.
    ``σ √(π/2) L½(−A²/2σ²)`` with the Bessel functions integrated numerically; the
    asymptotic ``A + σ²/2A`` above A/σ = 45."""
    a = np.atleast_1d(np.asarray(amplitude, dtype=np.float64))
    y = a * a / (4 * sigma * sigma)
    out = np.empty_like(a)
    big = y > 500
    out[big] = a[big] + sigma * sigma / (2 * a[big])
    if (~big).any():
        theta = np.linspace(0.0, np.pi, 4001)
        e = np.exp(y[~big, None] * (np.cos(theta)[None, :] - 1.0))
        i0e = np.trapezoid(e, theta, axis=1) / np.pi
        i1e = np.trapezoid(e * np.cos(theta)[None, :], theta, axis=1) / np.pi
        ys = y[~big]
        out[~big] = sigma * math.sqrt(math.pi / 2) * ((1 + 2 * ys) * i0e + 2 * ys * i1e)
    return out


def _signal_course(spec: PhantomSpec) -> np.ndarray:
    """s(t) for every volume (dummy volumes brighter)."""
    ta = spec.analysed
    u = np.linspace(0.0, 1.0, ta) if ta > 1 else np.zeros(1)
    analysed = 1 + (spec.drift_linear * u + spec.drift_quadratic * u * u) / 100.0
    dummies = analysed[0] * (1 + 0.5 * 0.3 ** np.arange(spec.dummy_volumes))
    return np.concatenate([dummies, analysed])


def _object(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """(object image O(y, x) in signal units, the cylinder's cross-section mask)."""
    n = spec.matrix
    yy, xx = np.mgrid[0:n, 0:n]
    disk = (yy - spec.center) ** 2 + (xx - spec.center) ** 2 <= spec.radius_px ** 2
    axis = 0 if spec.phase_encoding == "COL" else 1
    ghost = np.roll(disk, n // 2, axis=axis)
    return spec.signal * (disk + spec.ghost / 100.0 * ghost), disk


def _global_fluctuation(spec: PhantomSpec, rng: np.random.Generator, basis: np.ndarray,
                        alternating: np.ndarray) -> np.ndarray:
    """g(t) over the analysed volumes: orthogonal to the trend and to the odd/even
    pattern, residual variance exactly 1 (exact mode), else white."""
    ta = spec.analysed
    g = rng.standard_normal(ta)
    if not spec.exact:
        return g
    q, _ = np.linalg.qr(np.column_stack([basis, alternating]))
    g -= q @ (q.T @ g)
    return g * math.sqrt((ta - 3) / (g @ g))


def _exact_roi_noise(spec: PhantomSpec, rng: np.random.Generator, basis: np.ndarray, alternating: np.ndarray,
                     g: np.ndarray) -> np.ndarray:
    """Unit-σ real noise (T, n, n) for the ROI with exactly nominal moments (module
    docstring); also every pixel's residual after the quadratic fit has variance exactly 1,
    so the SFNR image is exact too.

    Pixel ``j`` of ring ``k`` (the pixels a width-k ROI adds to the width-(k-1) one, m of
    them) is ``z_j · â + s_k / m + u_j``: ``â`` the normalised odd/even pattern, ``s_k``
    the ring's sum (orthogonal rings, norm² ``m (T-3)``), ``u_j`` orthogonal to everything
    else and summing to zero over the ring, scaled so the pixel's residual norm² is
    ``T - 3``; ``z`` has zero mean per ring and unit sample variance over the ROI."""
    ta, n = spec.analysed, spec.roi_size
    a_unit = alternating / np.linalg.norm(alternating)
    q, _ = np.linalg.qr(np.column_stack([basis, a_unit, g, rng.standard_normal((ta, ta - 5))]))
    v = q[:, 5:]                                   # orthonormal complement of trend, odd/even and g
    dim_v = v.shape[1]
    a_resid = a_unit - basis @ (basis.T @ a_unit)
    a_energy = float(a_resid @ a_resid)            # what z·â leaves after the quadratic fit
    rings = roi_ring_index(n).ravel()
    coeff, _ = np.linalg.qr(rng.standard_normal((dim_v, n)))
    z = np.clip(rng.standard_normal(n * n), -2.5, 2.5)
    for k in range(1, n + 1):
        idx = rings == k
        z[idx] -= z[idx].mean()
    z /= z.std(ddof=1)
    w = np.empty((ta, n * n))
    for k in range(1, n + 1):
        idx = np.flatnonzero(rings == k)
        m = idx.size
        ring_sum = v @ coeff[:, k - 1] * math.sqrt(m * (ta - 3))
        w[:, idx] = ring_sum[:, None] / m
        if m > 1:
            # u_j in V, orthogonal to the ring sum, summing to zero, with prescribed norms:
            # alternate between rescaling and re-centring (converges in a few dozen steps)
            target = (ta - 3) - z[idx] ** 2 * a_energy - (ta - 3) / m
            if target.min() <= 0:
                raise ValueError("volumes: too few for exact noise on this ROI")
            s_unit = coeff[:, k - 1]
            c = rng.standard_normal((dim_v, m))
            c -= np.outer(s_unit, s_unit @ c)
            for _ in range(500):
                c -= c.mean(axis=1, keepdims=True)
                norms = np.einsum("ij,ij->j", c, c)
                if np.abs(norms / target - 1).max() < 1e-12:
                    break
                c *= np.sqrt(target / norms)
            w[:, idx] += v @ c
        w[:, idx] += a_unit[:, None] * z[None, idx]
    return w.reshape(ta, n, n)


def generate(spec: PhantomSpec) -> Phantom:
    """Generate the images and their truth (see the module docstring)."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    nt, nz, n = spec.volumes, spec.slices, spec.matrix
    ta, skip = spec.analysed, spec.dummy_volumes
    basis = detrend_basis(ta)
    alternating = np.where(np.arange(ta) % 2 == 0, 1.0, -1.0)
    course = _signal_course(spec)
    g = _global_fluctuation(spec, rng, basis, alternating)
    level = course.copy()
    level[skip:] += spec.fluctuation / spec.signal * g
    obj, _ = _object(spec)
    y0, y1 = roi_bounds(spec.center, spec.roi_size)
    inside = set(spec.phantom_slices())
    images = np.empty((nt, nz, n, n), dtype=np.uint16)
    raw_series = {}
    for z in range(nz):
        zrng = np.random.default_rng([spec.seed, z + 1])
        real = zrng.normal(0.0, spec.noise, (nt, n, n))
        imag = zrng.normal(0.0, spec.noise, (nt, n, n))
        o = obj if z in inside else np.zeros_like(obj)
        if z in inside and spec.exact:
            real[skip:, y0:y1, y0:y1] = spec.noise * _exact_roi_noise(spec, zrng, basis, alternating, g)
        clean = o[None] * level[:, None, None]
        if z in inside:
            raw_series[z] = (clean[skip:, y0:y1, y0:y1] + real[skip:, y0:y1, y0:y1]).mean(axis=(1, 2))
        mag = np.sqrt((clean + real) ** 2 + imag ** 2)
        images[:, z] = np.clip(np.rint(mag), 0, MAX_VALUE).astype(np.uint16)
    start = _dt.datetime.fromisoformat(spec.start)
    times = [start + _dt.timedelta(seconds=spec.tr * t) for t in range(nt)]
    return Phantom(spec, images, truth(spec, raw_series), times)


def truth(spec: PhantomSpec, raw_series: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
    """The analytic values of the fBIRN metrics for ``spec`` (module docstring); with
    ``raw_series`` (realised ROI mean series per slice) also the raw drift."""
    s = _signal_course(spec)[spec.dummy_volumes:]
    sigma, tau, n = spec.noise, spec.fluctuation, spec.roi_size
    mean = spec.signal * s.mean()
    widths = np.arange(1, n + 1)
    cv = 100 * np.sqrt(tau ** 2 + sigma ** 2 / widths ** 2) / mean
    # expected mean image of a phantom slice -> the ghost measure
    obj, _ = _object(spec)
    levels = np.unique(obj)
    expected = rician_mean((levels[:, None] * s[None, :]).ravel(), sigma).reshape(len(levels), -1).mean(axis=1)
    image = expected[np.searchsorted(levels, obj)]
    axis = 0 if spec.phase_encoding == "COL" else 1
    ghost = ghost_percent(image, axis, float(np.percentile(image, 99)))
    out: dict[str, Any] = {
        "mean": mean, "snr": mean / sigma, "sfnr": mean / math.sqrt(sigma ** 2 + tau ** 2),
        "fluctuation_pct": float(cv[-1]), "drift_pct": 100 * spec.signal * (s.max() - s.min()) / mean,
        "rdc": float(cv[0] / cv[-1]), "ghost_pct": ghost, "ghost_fraction_pct": spec.ghost,
        "cmass.x.disp_mm": 0.0, "cmass.y.disp_mm": 0.0, "cmass.z.disp_mm": 0.0,
        "volumes": spec.analysed, "slices": spec.slices, "phantom_slices": spec.phantom_slices(),
    }
    for k, value in zip(widths, cv):
        out[f"weisskoff.cv.{k:02d}"] = float(value)
    if raw_series:
        out["slice_drift_raw_pct"] = {z: float(100 * (r.max() - r.min()) / r.mean()) for z, r in raw_series.items()}
        out["drift_raw_pct"] = out["slice_drift_raw_pct"][spec.slices // 2]
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# DICOM writing

def write_series(phantom: Phantom, outdir: Path, layout: str) -> list[Path]:
    """Write ``phantom`` into ``outdir`` in one of :data:`LAYOUTS`; returns the files."""
    from . import phantom_dicom
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, found {layout!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return phantom_dicom.WRITERS[layout](phantom, outdir)


def spec_from_options(**options: Any) -> PhantomSpec:
    """A :class:`PhantomSpec` from keyword options (None = default)."""
    return replace(PhantomSpec(), **{k: v for k, v in options.items() if v is not None})

