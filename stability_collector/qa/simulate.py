"""Operating characteristics of a QA configuration on synthetic series (``hops-qa simulate``).

Synthetic scans of ``summary.snr_mean``: independent normal values around 300 with a
scan-to-scan coefficient of variation ``cv_pct`` (the real variation of a site's phantom
SNR: look at its moving range).  Each trial is evaluated by exactly the code that evaluates
stored series (:func:`.evaluate.evaluate_series`, with the configured baseline, levels and
rules), so the numbers describe what the site will see:

* false alarms: the fraction of in-control scans whose status is not ``ok``;
* a step: the fraction of trials in which a step of ``step_pct`` right after the baseline
  is flagged within ``within`` scans;
* a drift: the fraction of trials in which a drift of ``drift_pct`` per scan starting right
  after the baseline is flagged by the EWMA rule within ``within`` scans.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import QAConfig
from .evaluate import Series, SeriesKey, evaluate_series

__all__ = ["synthetic_series", "false_alarm_fractions", "step_detection", "drift_detection", "Characteristics",
           "characteristics"]

LEVEL = 300.0
KEY = SeriesKey("simulated", "sim", "summary.snr_mean")
WEEK = 7 * 86400


def synthetic_series(values: np.ndarray, key: SeriesKey = KEY) -> Series:
    times = 1_700_000_000 + WEEK * np.arange(len(values), dtype=np.int64)
    return Series(key, times, np.asarray(values, dtype=float))


def _scanner_config(config: QAConfig):
    return config.for_scanner(KEY.scanner)


def false_alarm_fractions(config: QAConfig, cv_pct: float, scans: int = 1000, trials: int = 50,
                          seed: int = 1) -> np.ndarray:
    """Per trial: fraction of ``scans`` in-control scans flagged (status >= 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        values = LEVEL * (1 + cv_pct / 100 * rng.standard_normal(scans))
        ev = evaluate_series(synthetic_series(values), [], config)
        out.append(float((ev.status > 0).mean()))
    return np.array(out)


def step_detection(config: QAConfig, cv_pct: float, step_pct: float, within: int = 3, trials: int = 200,
                   seed: int = 2) -> tuple[float, np.ndarray]:
    """Fraction of trials where a step after the baseline is flagged within ``within`` scans,
    and the scans-to-first-flag of each detecting trial (1 = the first stepped scan)."""
    n_base = _scanner_config(config).baseline_scans
    rng = np.random.default_rng(seed)
    delays = []
    for _ in range(trials):
        values = LEVEL * (1 + cv_pct / 100 * rng.standard_normal(n_base + within))
        values[n_base:] *= 1 + step_pct / 100
        ev = evaluate_series(synthetic_series(values), [], config)
        hit = np.nonzero(ev.status[n_base:] > 0)[0]
        if len(hit):
            delays.append(int(hit[0]) + 1)
    return len(delays) / trials, np.array(delays)


def drift_detection(config: QAConfig, cv_pct: float, drift_pct: float, within: int = 20, trials: int = 200,
                    seed: int = 3, rule: str = "ewma") -> tuple[float, np.ndarray]:
    """Fraction of trials where ``rule`` flags a linear drift (``drift_pct`` per scan, from the
    first scan after the baseline) within ``within`` scans, and the delays."""
    n_base = _scanner_config(config).baseline_scans
    rng = np.random.default_rng(seed)
    delays = []
    for _ in range(trials):
        values = LEVEL * (1 + cv_pct / 100 * rng.standard_normal(n_base + within))
        values[n_base:] *= 1 + drift_pct / 100 * np.arange(1, within + 1)
        ev = evaluate_series(synthetic_series(values), [], config)
        fired = ev.flags.get(rule)
        hit = np.nonzero(fired[n_base:])[0] if fired is not None else []
        if len(hit):
            delays.append(int(hit[0]) + 1)
    return len(delays) / trials, np.array(delays)


@dataclass
class Characteristics:
    cv_pct: float
    false_alarms_mean: float
    false_alarms_p90: float
    step_pct: float
    step_detected: float
    step_median_delay: float
    drift_pct: float
    drift_detected: float
    drift_median_delay: float

    def line(self) -> str:
        return (f"CV {self.cv_pct:4.2f} %: false alarms {100 * self.false_alarms_mean:5.2f} % of in-control scans "
                f"(90th percentile of trials {100 * self.false_alarms_p90:5.2f} %); "
                f"{self.step_pct:g} % step flagged within 3 scans in {100 * self.step_detected:5.1f} % "
                f"(median {self.step_median_delay:g} scans); {self.drift_pct:g} %/scan drift flagged by EWMA "
                f"within 20 scans in {100 * self.drift_detected:5.1f} % (median {self.drift_median_delay:g})")


def characteristics(config: QAConfig, cv_pct: float, step_pct: float = 2.0, drift_pct: float = 0.1,
                    trials: int = 200, scans: int = 1000) -> Characteristics:
    fa = false_alarm_fractions(config, cv_pct, scans=scans, trials=trials)
    step, step_delays = step_detection(config, cv_pct, step_pct, trials=trials)
    drift, drift_delays = drift_detection(config, cv_pct, drift_pct, trials=trials)
    med = lambda d: float(np.median(d)) if len(d) else float("nan")  # noqa: E731
    return Characteristics(cv_pct, float(fa.mean()), float(np.quantile(fa, 0.9)), step_pct, step, med(step_delays),
                           drift_pct, drift, med(drift_delays))
