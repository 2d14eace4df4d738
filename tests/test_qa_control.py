"""hops-qa's numeric core and evaluation on synthetic series: the issue's acceptance numbers
(step, drift, false alarms, service event), every control rule, levels and configuration."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stability_collector.core.errors import ConfigError
from stability_collector.qa.config import DEFAULT_LEVELS, build_qa_config, qa_node
from stability_collector.qa.control import RULES, TAIL_3SIGMA, Baseline, estimate_baseline, rule_flags, t_upper_quantile
from stability_collector.qa.evaluate import (
    STATUS_ACTION,
    STATUS_OK,
    STATUS_TOLERANCE,
    ScannerActivity,
    Series,
    SeriesKey,
    evaluate_series,
    result_lines,
)
from stability_collector.qa.events import ServiceEvent
from stability_collector.qa.simulate import drift_detection, false_alarm_fractions, step_detection, synthetic_series

DEFAULTS = build_qa_config({})
# Scan-to-scan variation of the synthetic SNR series (coefficient of variation, %).  A 2 % step
# can only be caught within 3 scans at <= 1 % false alarms if the scans themselves vary by well
# under 1 %; 'hops-qa simulate' prints the same figures for other variations.
CV_STEP = 0.4
CV_DRIFT = 0.5


# --- the "done when" numbers ----------------------------------------------------------------

def test_two_percent_snr_step_is_flagged_within_three_scans():
    detected, delays = step_detection(DEFAULTS, CV_STEP, 2.0, within=3, trials=400)
    assert detected >= 0.99, f"2 % step flagged within 3 scans in only {detected:.1%} of trials"
    assert np.median(delays) == 1


def test_slow_drift_is_flagged_by_ewma_within_twenty_scans():
    detected, delays = drift_detection(DEFAULTS, CV_DRIFT, 0.1, within=20, trials=400, rule="ewma")
    assert detected >= 0.99, f"0.1 %/scan drift flagged by EWMA within 20 scans in only {detected:.1%} of trials"
    assert np.max(delays) <= 20


def test_thousand_in_control_scans_give_at_most_one_percent_false_alarms():
    fractions = false_alarm_fractions(DEFAULTS, CV_DRIFT, scans=1000, trials=200)
    assert fractions.mean() <= 0.01, f"mean false-alarm rate {fractions.mean():.2%}"
    assert np.median(fractions) <= 0.01


def _stepped(n=80, step_at=40, gain=1.08, cv=0.5, seed=4):
    rng = np.random.default_rng(seed)
    values = 300 * (1 + cv / 100 * rng.standard_normal(n))
    values[step_at:] *= gain
    return synthetic_series(values)


def test_service_event_resets_the_baseline():
    series = _stepped()
    without = evaluate_series(series, [], DEFAULTS)
    # without an event the new level is out of control for ever
    assert (without.status[40:] > 0).all()
    event = ServiceEvent("e1", "simulated", "RF amplifier replaced", int(series.times[40]))
    with_event = evaluate_series(series, [event], DEFAULTS)
    assert with_event.phase[:40].tolist() == [0] * 40 and with_event.phase[40:].tolist() == [1] * 40
    assert with_event.phase_events == [None, event]
    new = with_event.baselines[1]
    assert new.complete and new.centre == pytest.approx(300 * 1.08, rel=0.01)
    # the post-service level is the new normal: at most the odd false alarm
    assert (with_event.status[40:] > 0).sum() <= 2
    # 40 scans after the event: the new baseline is complete and judges the whole phase
    assert not with_event.provisional.any()
    # with only 10 scans after the event the new phase is still provisional
    short = evaluate_series(synthetic_series(series.values[:50]), [event], DEFAULTS)
    assert short.provisional[40:].all() and not short.provisional[:40].any()


def test_scans_of_a_new_phase_are_judged_by_absolute_levels_until_its_baseline_is_complete():
    series = _stepped(n=50, step_at=40, gain=1.0)
    config = build_qa_config({"levels": {"summary.snr_mean": {"action": {"high": 3000.0}}}})
    series.values[45] = 3500.0    # far beyond the absolute action level, and beyond any control limit
    event = ServiceEvent("e1", "simulated", "coil replaced", int(series.times[40]))
    ev = evaluate_series(series, [event], config)
    assert ev.provisional[40:].all()
    assert not any(ev.flags[r][40:].any() for r in ev.flags)      # no rules on a provisional baseline
    assert ev.status[45] == STATUS_ACTION
    assert [s for i, s in enumerate(ev.status[40:].tolist()) if i != 5] == [STATUS_OK] * 9
    assert np.isnan(ev.ucl[40:]).all() and np.isfinite(ev.centre[40:]).all()


def test_coil_specific_event_only_splits_that_coil():
    event = ServiceEvent("e1", "simulated", "48ch coil replaced", 1_700_000_000 + 7 * 86400 * 30, coil="other")
    ev = evaluate_series(_stepped(n=50), [event], DEFAULTS)
    assert set(ev.phase.tolist()) == {0}
    ev = evaluate_series(_stepped(n=50), [ServiceEvent("e2", "simulated", "x", event.when, coil="sim")], DEFAULTS)
    assert set(ev.phase.tolist()) == {0, 1}


# --- the control rules ---------------------------------------------------------------------------------

KNOWN = Baseline(centre=0.0, sigma=1.0, scans=20, complete=True, prediction=False)


def _fires(rule: str, values) -> list[int]:
    return np.nonzero(rule_flags(np.asarray(values, float), KNOWN, [rule])[rule])[0].tolist()


@pytest.mark.parametrize("rule, values, expected", [
    ("we1", [0, 0.5, 3.2, 0, -3.1], [2, 4]),
    ("we2", [0, 2.5, 0, 2.2, 0, -2.1, 1, -2.5, 2.5], [3, 7]),
    ("we3", [1.5, 1.2, 0, 1.1, 1.3, 0, 0], [4]),
    ("we4", [0.1] * 7 + [-0.1] + [0.2] * 8, [15]),
    ("nelson2", [0.1] * 9, [8]),
    ("nelson3", [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.4], [5]),
    ("nelson4", [0.5, -0.5] * 7 + [0.5], [13, 14]),
    ("nelson7", [0.5, -0.5] * 7 + [0.2, 2.0], [14]),
    ("nelson8", [1.5, -1.5, 1.2, -1.2, 1.3, -1.4, 1.1, -1.1], [7]),
])
def test_each_zone_and_run_rule_fires_where_its_pattern_completes(rule, values, expected):
    assert _fires(rule, values) == expected


def test_rules_stay_quiet_on_a_quiet_series():
    rng = np.random.default_rng(0)
    values = rng.uniform(-0.9, 0.9, 12)
    values[::2] = np.abs(values[::2])      # no long runs on one side either way
    values[1::2] = -np.abs(values[1::2])
    values[5] = values[4]                  # and no 14 alternating
    for rule in ("we1", "we2", "we3", "we4", "nelson2", "nelson3", "ewma", "cusum"):
        assert _fires(rule, values) == [], rule


def test_ewma_and_cusum_catch_a_small_sustained_shift_that_we1_misses():
    values = [0.0] * 5 + [1.5] * 15       # a 1.5-sigma shift
    assert _fires("we1", values) == []
    assert _fires("ewma", values) and _fires("ewma", values)[0] >= 5
    assert _fires("cusum", values) and _fires("cusum", values)[0] >= 5


def test_a_short_gross_excursion_does_not_hold_the_ewma_out_for_weeks():
    values = [0.0] * 10 + [40.0] * 3 + [0.0] * 10      # a ghosting episode of three scans
    assert _fires("we1", values) == [10, 11, 12]
    assert max(_fires("ewma", values)) <= 13            # outliers enter the EWMA at the 3-sigma limit
    assert max(_fires("cusum", values)) <= 16            # CUSUM forgets 0.5 sigma per in-control scan


def test_every_rule_in_the_catalogue_is_implemented():
    flags = rule_flags(np.zeros(20), KNOWN, list(RULES))
    assert set(flags) == set(RULES)


# --- baseline and limits ---------------------------------------------------------------------------------

def test_baseline_uses_the_moving_range_of_the_first_n_scans():
    values = np.array([10, 12, 11, 13, 12, 100.0])
    b = estimate_baseline(values, 5, prediction=False)
    assert b.centre == pytest.approx(11.6)
    assert b.sigma == pytest.approx(np.mean([2, 1, 2, 1]) / 1.128)
    assert b.complete and b.ucl == pytest.approx(11.6 + 3 * b.sigma)
    assert not estimate_baseline(values[:3], 5).complete


def test_moving_range_sigma_ignores_a_slow_drift_inside_the_baseline():
    drift = np.linspace(0, 10, 20)                     # a ramp: large SD, small moving range
    b = estimate_baseline(drift, 20, prediction=False)
    assert b.sigma == pytest.approx((10 / 19) / 1.128)
    assert b.sigma < np.std(drift) / 5


def test_student_t_quantile():
    assert t_upper_quantile(0.025, 1) == pytest.approx(12.706, rel=1e-3)
    assert t_upper_quantile(0.025, 2) == pytest.approx(4.303, rel=1e-3)
    assert t_upper_quantile(0.025, 30) == pytest.approx(2.042, rel=1e-3)
    assert t_upper_quantile(TAIL_3SIGMA, 1e6) == pytest.approx(3.0, rel=1e-3)


def test_prediction_limits_widen_for_a_short_baseline():
    b = Baseline(0.0, 1.0, 20, True, prediction=True)
    assert b.sigma_eff == pytest.approx(1.29, abs=0.01)
    assert Baseline(0.0, 1.0, 200, True).sigma_eff == pytest.approx(1.02, abs=0.01)
    assert Baseline(0.0, 1.0, 20, True, prediction=False).sigma_eff == 1.0


# --- levels, status, output ------------------------------------------------------------------------------

def test_levels_give_tolerance_and_action_status_with_reasons():
    values = np.full(30, 300.0) + np.tile([0.5, -0.5], 15)
    values[25] = 300 * 0.94        # 6 % low: below tolerance (-5 %), above action (-10 %)
    values[27] = 300 * 0.89        # 11 % low: action
    ev = evaluate_series(synthetic_series(values), [], build_qa_config({"rules": []}))
    assert ev.status[25] == STATUS_TOLERANCE and ev.status[27] == STATUS_ACTION
    assert ev.status[:25].tolist() == [STATUS_OK] * 25
    assert "below the tolerance level 285" in ev.reasons[25][0] and "-5 % of the baseline centre" in ev.reasons[25][0]
    assert any("action level 270" in r for r in ev.reasons[27])
    assert ev.levels["tolerance_low"][0] == pytest.approx(285.0) and "action_high" not in ev.levels


def test_a_control_rule_sets_the_configured_status():
    values = np.full(30, 300.0) + np.tile([0.5, -0.5], 15)
    values[25] = 305.0            # far beyond 3 sigma of a +-0.5 series, inside the levels
    for rule_status in (1, 2):
        config = build_qa_config({"rules": ["we1"], "rule_status": rule_status})
        ev = evaluate_series(synthetic_series(values), [], config)
        assert ev.status[25] == rule_status and ev.flags["we1"][25]
        assert ev.reasons[25] == [f"we1: {RULES['we1']}"]


def test_result_lines_are_named_and_time_stamped_with_each_scan():
    series = _stepped(n=25)
    series.key = SeriesKey("prisma1", "32ch", "summary.snr_mean")
    ev = evaluate_series(series, [], DEFAULTS)
    lines = result_lines(ev, "hops.qa")
    by_field: dict[str, list[tuple[float, int]]] = {}
    for line in lines:
        path, value, ts = line.split()
        assert path.startswith("hops.qa.prisma1.32ch.snr_mean.")
        by_field.setdefault(path.rsplit(".", 1)[1], []).append((float(value), int(ts)))
    assert {"value", "status", "center", "ucl", "lcl", "tolerance_low", "action_low", "rule_we1", "rule_we2",
            "rule_ewma", "ewma", "ewma_ucl", "ewma_lcl", "phase", "provisional"} <= set(by_field)
    assert [t for _, t in by_field["status"]] == series.times.tolist()
    assert [v for v, _ in by_field["value"]] == pytest.approx(series.values.tolist())


def test_days_since_scan_saw_tooth_and_overdue():
    day = 86400
    act = ScannerActivity("prisma1", np.array([0, 7 * day, 20 * day]), 8.0, now=30 * day + 3600)
    assert act.days_since_scan == pytest.approx(10 + 1 / 24) and act.overdue
    assert act.gaps() == [(7 * day, 20 * day, 13.0), (20 * day, 30 * day + 3600, pytest.approx(10 + 1 / 24))]
    points = {}
    for line in act.lines("hops.qa"):
        path, value, ts = line.split()
        points.setdefault(path, []).append((int(ts), float(value)))
    days = points["hops.qa.prisma1.days_since_scan"]
    assert days[0] == (0, 0.0) and (6 * day, 6.0) in days and (7 * day, 0.0) in days and (19 * day, 12.0) in days
    assert days[-1] == (30 * day + 3600, pytest.approx(10 + 1 / 24, abs=1e-3))
    overdue = dict(points["hops.qa.prisma1.scan_overdue"])
    assert overdue[16 * day] == 1 and overdue[15 * day] == 0 and overdue[20 * day] == 0


# --- configuration -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, key", [
    ({"rules": ["we1", "we9"]}, "rules"),
    ({"baseline_scans": 3}, "baseline_scans"),
    ({"baseline_scans": 12.5}, "baseline_scans"),
    ({"levels": {"summary.snr_mean": {"tolerance": {"low": "+5%"}}}}, "levels.summary.snr_mean.tolerance.low"),
    ({"levels": {"summary.snr_mean": {"tolerance": {"lo": 3}}}}, "levels.summary.snr_mean.tolerance.lo"),
    ({"levels": {"summary.snr_mean": {"tolerance": {"low": "five"}}}}, "levels.summary.snr_mean.tolerance.low"),
    ({"levels": {"summary.ghost_mean": {"tolerance": {"high": 4.0}, "action": {"high": 3.5}}}},
     "levels.summary.ghost_mean.tolerance.high"),
    ({"levels": {"summary.drift_pct": {"action": {"low": 2.0, "high": -2.0}}}}, "levels.summary.drift_pct.action"),
    ({"scanners": {"prisma1": {"expected_interval_days": 0}}}, "scanners.prisma1.expected_interval_days"),
    ({"scanners": {"prisma1": {"rules": ["ewma", "bogus"]}}}, "scanners.prisma1.rules"),
    ({"scanners": {"prisma1": {"colour": "red"}}}, "scanners.prisma1.colour"),
    ({"scanners": {"bad name": {}}}, "scanners.bad name"),
    ({"metrics": ["snr_mean"]}, "metrics[0]"),
    ({"graphite_web": "graphite:8080"}, "graphite_web"),
    ({"graphite": "graphite:http"}, "graphite"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"ewma_lambda": 1.5}, "ewma_lambda"),
    ({"rule_status": 3}, "rule_status"),
    ({"bogus": 1}, "bogus"),
])
def test_config_errors_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        build_qa_config(values)
    assert err.value.key == key, str(err.value)


def test_config_levels_per_scanner_then_global_then_defaults():
    config = build_qa_config({
        "levels": {"summary.snr_mean": {"tolerance": {"low": "-3%"}}, "fbirn.*": {"action": {"high": 9.0}}},
        "rules": ["we1", "nelson5", "ewma"],
        "scanners": {"prisma1": {"baseline_scans": 12, "levels": {"summary.snr_mean": {"action": {"low": 250}}}}},
    })
    own, origin = config.levels_for("prisma1", "summary.snr_mean")
    assert own.action_low.value == 250 and own.tolerance_low is None and origin.startswith("scanners.prisma1")
    glob, origin = config.levels_for("vida2", "summary.snr_mean")
    assert glob.tolerance_low.value == -3 and glob.tolerance_low.percent and origin == "levels.summary.snr_mean"
    assert config.levels_for("vida2", "fbirn.sfnr")[0].action_high.value == 9.0     # site pattern first
    assert config.levels_for("vida2", "summary.ghost_mean")[0] is DEFAULT_LEVELS["summary.ghost_mean"]
    assert config.levels_for("vida2", "summary.snr_min") == (None, "none")
    assert config.for_scanner("prisma1").baseline_scans == 12
    assert config.for_scanner("prisma1").rules == ("we1", "we2", "ewma")    # inherits, alias resolved
    assert config.for_scanner("vida2").baseline_scans == 20


def test_every_default_level_states_its_basis():
    for pattern, levels in DEFAULT_LEVELS.items():
        assert len(levels.basis) > 80, pattern
        assert levels.items(), pattern


def test_qa_metric_node_names():
    assert qa_node("summary.snr_mean") == "snr_mean"
    assert qa_node("fbirn.sfnr") == "fbirn_sfnr"
    assert qa_node("fbirn.percent_fluct") == "fbirn_percent_fluct"


def test_nan_and_duplicate_points_are_dropped():
    s = Series.from_points(SeriesKey("a", "b", "summary.snr_mean"), [(3, 1.0), (1, float("nan")), (2, 2.0), (3, 1.5)])
    assert s.times.tolist() == [2, 3] and s.values.tolist() == [2.0, 1.5]
    assert math.isfinite(evaluate_series(s, [], DEFAULTS).centre[-1])


def test_series_targets_and_paths_with_a_scanner_path_override():
    from stability_collector.qa.evaluate import _parse_path, series_targets
    config = build_qa_config({"metrics": ["summary.snr_mean", "fbirn.*"],
                              "scanners": {"bay2": {"path": "Harvard.Northwest.Bay2"}}})
    assert series_targets(config) == ["hops.stability.*.*.summary.snr_mean", "Harvard.Northwest.Bay2.*.summary.snr_mean",
                                      "hops.stability.*.*.fbirn.*", "Harvard.Northwest.Bay2.*.fbirn.*"]
    assert series_targets(config, ["prisma1"]) == ["hops.stability.prisma1.*.summary.snr_mean",
                                                   "hops.stability.prisma1.*.fbirn.*"]
    assert _parse_path("Harvard.Northwest.Bay2.64.summary.snr_mean", config) == SeriesKey("bay2", "64",
                                                                                          "summary.snr_mean")
    assert _parse_path("hops.stability.vida2.20ch.fbirn.sfnr", config) == SeriesKey("vida2", "20ch", "fbirn.sfnr")
    assert _parse_path("elsewhere.x.y.summary.snr_mean", config) is None
