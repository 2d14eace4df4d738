"""Generate realistic synthetic stability reports (for the demo, dashboards and tests).

The default set, committed in ``sample_statfiles/``, is a year of weekly phantom scans
for two scanners:

* ``prisma1`` (pre-XA30 file names ``Stability_20250106T081512.txt``), 32-channel head
  coil, slow signal decay over the year and a **step change** after a service visit on
  2025-06-16 (new RF amplifier: SNR up ~8 %, SI up ~5 %, drift within a run halved);
* ``vida2`` (XA30 file names ``Stability_2025-01-07T07-45-03.txt``), 20-channel head
  coil weekly, plus a 64-channel head/neck coil (48 channels) scan every fourth week,
  and a ghosting episode in October.

Values follow the shape of real reports (per-slice profiles taken from the MGH sample,
noise, drift within a run fitted by ``p0 + p1 t + p2 t^2``).  Deterministic for a seed.
No report is dated in the future (carbon would discard it): a set that would reach past
the present is refused before anything is written.
"""
from __future__ import annotations

import datetime as _dt
import math
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ScannerModel", "DEFAULT_SCANNERS", "render_report", "generate", "report_name"]

# Per-slice shape of SI and SNR, normalised from a real 16-slice report.
_SI_PROFILE = [0.83, 0.85, 0.87, 0.89, 0.92, 0.94, 0.96, 0.98, 1.00, 1.02, 1.05, 1.08,
               1.12, 1.17, 1.23, 1.31]
_SNR_PROFILE = [1.53, 1.57, 1.53, 1.44, 1.47, 1.42, 1.15, 1.00, 0.92, 0.93, 0.96, 0.90,
                0.79, 0.65, 0.71, 0.60]


@dataclass(frozen=True)
class ScannerModel:
    name: str
    xa30_names: bool
    channels: int
    si_level: float           # mid-slice SI at the start of the year
    snr_level: float          # mid-slice SNR
    decay_per_year: float     # fractional SI/SNR loss per year
    service_date: _dt.date | None = None
    service_gain: float = 0.0
    extra_coil_channels: int | None = None   # a second coil scanned every 4th week
    ghost_episode: tuple[_dt.date, _dt.date] | None = None
    weekday: int = 0          # 0 = Monday
    hour: int = 8


DEFAULT_SCANNERS = (
    ScannerModel("prisma1", False, 32, 500.0, 290.0, 0.03,
                 service_date=_dt.date(2025, 6, 16), service_gain=0.08, weekday=0, hour=8),
    ScannerModel("vida2", True, 20, 820.0, 210.0, 0.02, extra_coil_channels=48,
                 ghost_episode=(_dt.date(2025, 10, 6), _dt.date(2025, 10, 27)), weekday=1, hour=7),
)


def report_name(when: _dt.datetime, xa30: bool) -> str:
    if xa30:
        return when.strftime("Stability_%Y-%m-%dT%H-%M-%S.txt")
    return when.strftime("Stability_%Y%m%dT%H%M%S.txt")


def render_report(slices: int, measurements: int, channels: int, si_level: float, snr_level: float,
                  drift: float, ghost_level: float, rng: random.Random) -> str:
    """A complete report text (LF endings, two trailing blank lines like the scanner)."""
    profile_si = [_SI_PROFILE[int(i * len(_SI_PROFILE) / slices)] for i in range(slices)]
    profile_snr = [_SNR_PROFILE[int(i * len(_SNR_PROFILE) / slices)] for i in range(slices)]
    out = [f"Stability configuration: {slices} slices, {measurements} measurements, {channels} channels", ""]
    stat_header = "slice#\tmin\tmax\tmean\tsd\tsd[%]\tP2P[%]"
    last_t = measurements - 1
    fits = []
    si_rows, sifit_rows, snr_rows, ghost_rows = [], [], [], []
    for i in range(slices):
        p0 = si_level * profile_si[i] * rng.gauss(1.0, 0.002)
        # drift over the run: p1 * t + p2 * t^2 gives ``drift`` (fraction) at the end
        p1 = drift * p0 / last_t * rng.gauss(1.0, 0.15) if last_t else 0.0
        p2 = abs(p1) / max(last_t, 1) * 0.002 * rng.gauss(1.0, 0.5)
        fit_mean = p0 + p1 * last_t / 2 + p2 * last_t * last_t / 3
        noise_sd = 0.00028 * p0 * rng.gauss(1.0, 0.08)
        si_sd = math.hypot(noise_sd, abs(p1 * last_t) / math.sqrt(12))
        si_rows.append(_stat_row(i + 1, fit_mean, si_sd, 2.6 * si_sd, 2.9 * si_sd, rng))
        sifit_rows.append(_stat_row(i + 1, p0, noise_sd, 3.0 * noise_sd, 3.3 * noise_sd, rng))
        snr = snr_level * profile_snr[i] * rng.gauss(1.0, 0.01)
        snr_sd = snr * rng.uniform(0.05, 0.14)
        snr_rows.append(_stat_row(i + 1, snr, snr_sd, 2.2 * snr_sd, 4.5 * snr_sd, rng))
        ghost = ghost_level * rng.gauss(1.0, 0.04)
        ghost_sd = ghost * rng.uniform(0.008, 0.013)
        ghost_rows.append(_stat_row(i + 1, ghost, ghost_sd, 3.0 * ghost_sd, 3.5 * ghost_sd, rng))
        chisq = noise_sd ** 2 * measurements * rng.gauss(1.0, 0.1)
        fits.append(f"{i + 1:2d}\t{p0:+.6f}\t{p1:+.6f}\t{p2:+.6f}\t{chisq:+.6f}")
    for name, rows in (("SI", si_rows), ("SIfit", sifit_rows), ("SNR", snr_rows), ("ghost", ghost_rows)):
        out += [f"Stability {name} results:", "", stat_header, *rows, "", ""]
    out += ["Stability fit results:", "", "slice#\tp[0]\tp[1]\tp[2]\tchisq", *fits, "", ""]
    return "\n".join(out) + "\n"


def _stat_row(slice_no: int, mean: float, sd: float, below: float, above: float, rng: random.Random) -> str:
    lo = mean - below * rng.uniform(0.9, 1.1)
    hi = mean + above * rng.uniform(0.9, 1.1)
    sd_pct = sd / mean * 100 if mean else 0.0
    p2p_pct = (hi - lo) / mean * 100 if mean else 0.0
    return f"{slice_no:2d}\t{lo:.2f}\t{hi:.2f}\t{mean:.2f}\t{sd:.3f}\t{sd_pct:.3f}\t{p2p_pct:.3f}"


def generate(out_dir: str | Path, start: _dt.date = _dt.date(2025, 1, 6), weeks: int = 52,
             scanners: tuple[ScannerModel, ...] = DEFAULT_SCANNERS, seed: int = 20250106,
             now: _dt.datetime | None = None) -> list[Path]:
    """Write the sample set into ``out_dir/<scanner>/``; returns the files written.

    File names are wall-clock times, which ``ingest`` reads in this host's zone by default;
    raises ``ValueError`` (and writes nothing) if any scan would be later than ``now``
    (default: this host's local time) less a minute."""
    limit = (now or _dt.datetime.now()) - _dt.timedelta(seconds=60)
    planned: list[tuple[Path, str, _dt.datetime, int]] = []
    for model in scanners:
        for path, text, when, week in _plan(Path(out_dir), model, start, weeks, seed):
            planned.append((path, text, when, week))
    future = [(when, week) for _, _, when, week in planned if when > limit]
    if future:
        last = max(when for when, _ in future)
        fits = min(week for _, week in future)
        raise ValueError(f"{weeks} weeks from {start} would write reports up to {last:%Y-%m-%d %H:%M}, after "
                         f"the present ({limit:%Y-%m-%d %H:%M}); carbon discards datapoints from the future. "
                         f"At most {fits} week(s) from {start} lie in the past")
    written = []
    for path, text, _, _ in planned:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _plan(out: Path, model: ScannerModel, start: _dt.date, weeks: int, seed: int):
    """(path, text, scan time, week index) of every report of one scanner, in order."""
    rng = random.Random(f"{seed}-{model.name}")
    folder = out / model.name
    first = start + _dt.timedelta(days=(model.weekday - start.weekday()) % 7)
    for week in range(weeks):
        day = first + _dt.timedelta(weeks=week)
        years = (day - start).days / 365.25
        gain = 1.0 - model.decay_per_year * years
        drift = -0.004
        if model.service_date and day >= model.service_date:
            gain *= 1.0 + model.service_gain
            drift /= 2
        ghost = 2.5
        if model.ghost_episode and model.ghost_episode[0] <= day <= model.ghost_episode[1]:
            ghost = 3.6
        scans = [(model.channels, 0)]
        if model.extra_coil_channels and week % 4 == 3:
            scans.append((model.extra_coil_channels, 1))
        for channels, nth in scans:
            when = _dt.datetime.combine(day, _dt.time(model.hour, 0)) + _dt.timedelta(
                minutes=rng.randrange(0, 50) + 75 * nth, seconds=rng.randrange(60))
            coil_gain = 1.25 if channels >= 48 else 1.0
            text = render_report(16, 500, channels, model.si_level * gain * (0.62 if channels >= 48 else 1.0),
                                 model.snr_level * gain * coil_gain * rng.gauss(1.0, 0.015),
                                 drift * rng.gauss(1.0, 0.2), ghost, rng)
            yield folder / report_name(when, model.xa30_names), text, when, week
