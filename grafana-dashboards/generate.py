#!/usr/bin/env python3
"""Generate the HOPS Grafana dashboards (grafanalib) into this directory.

    python grafana-dashboards/generate.py          # write *.json
    python grafana-dashboards/generate.py --check  # exit 1 if a committed file differs

The committed JSON must equal what this source generates (a test checks it).  Metric
paths follow the default HOPS layout (``stability_collector.metrics``) and the magickbox
node metric names (``magickbox.node_metrics``).  All panels query the provisioned
Graphite data source (uid ``hops-graphite``, deploy/grafana/provisioning/).
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Annotations,
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from magickbox import node_metrics as nm  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "graphite", "uid": "hops-graphite"}
STAB = "hops.stability.$scanner.$coil"
QA = "hops.qa.$scanner.$coil"          # results of hops-qa (stability_collector/qa/evaluate.py)
# hops-qa tags each service event hops-service-<scanner> (stability_collector/qa/events.py); one tag,
# because graphite-web drops unknown tags from a multi-tag query instead of matching nothing
SERVICE_TAG = "hops-service"


def _thresholds(*steps: tuple[str, float | None]) -> list[dict]:
    return [{"color": color, "value": value} for color, value in steps]


def _series(title: str, targets: list[str], grid: tuple[int, int, int, int], unit: str = "none",
            description: str = "", thresholds: list[dict] | None = None, decimals: int | None = None,
            draw_points: bool = True) -> TimeSeries:
    """A time series panel; phantom data is sparse, so points are drawn and joined."""
    return TimeSeries(
        title=title, description=description, dataSource=DATASOURCE,
        targets=[Target(target=t, refId=chr(ord("A") + i), datasource=DATASOURCE) for i, t in enumerate(targets)],
        gridPos=GridPos(h=grid[3], w=grid[2], x=grid[0], y=grid[1]), unit=unit,
        thresholds=thresholds or _thresholds(("green", None)),
        thresholdsStyleMode="line" if thresholds else "off",
        spanNulls=True, showPoints="always" if draw_points else "auto", pointSize=6,
        valueDecimals=decimals, legendDisplayMode="table", legendPlacement="right",
        legendCalcs=["lastNotNull", "min", "max"],
    )


def _query_var(name: str, query: str, label: str, multi: bool = False, include_all: bool = False,
               all_value: str | None = None) -> Template:
    return Template(name=name, query=query, label=label, dataSource=DATASOURCE, type="query", refresh=1,
                    multi=multi, includeAll=include_all, allValue=all_value, sort=1, default=None)


def stability_overview() -> Dashboard:
    row = 0
    panels = [RowPanel(title="At a glance (summary over slices)", gridPos=GridPos(h=1, w=24, x=0, y=row))]
    row += 1
    stats = [
        ("Last SNR (mean over slices)", "summary.snr_mean", "none", None),
        ("Last percent fluctuation", "summary.fluctuation_pct", "percent",
         _thresholds(("green", None), ("orange", 0.1), ("red", 0.25))),
        ("Last drift over the run", "summary.drift_pct", "percent",
         _thresholds(("red", None), ("green", -1.0), ("red", 1.0))),
        ("Last ghost level", "summary.ghost_mean", "none", _thresholds(("green", None), ("orange", 3.0), ("red", 3.5))),
    ]
    for i, (title, metric, unit, steps) in enumerate(stats):
        panels.append(Stat(
            title=title, dataSource=DATASOURCE, reduceCalc="lastNotNull", format=unit, decimals=3,
            targets=[Target(target=f"aliasByNode({STAB}.{metric}, 2, 3)", refId="A", datasource=DATASOURCE)],
            gridPos=GridPos(h=4, w=6, x=6 * i, y=row), graphMode="area",
            thresholds=steps or _thresholds(("blue", None))))
    row += 4
    panels += [
        _series("SNR, mean over slices", [f"aliasByNode({STAB}.summary.snr_mean, 2, 3)",
                                          f"alias({STAB}.summary.snr_min, 'lowest slice')"],
                (0, row, 12, 8), description="Mean over slices of the SNR section's mean; a step "
                "after a service visit shows up here first."),
        _series("Percent fluctuation (SIfit sd[%], mean over slices)",
                [f"aliasByNode({STAB}.summary.fluctuation_pct, 2, 3)"], (12, row, 12, 8), unit="percent",
                decimals=3, thresholds=_thresholds(("green", None), ("orange", 0.1), ("red", 0.25)),
                description="Signal fluctuation after removing the fitted drift, in percent of the mean."),
    ]
    row += 8
    panels += [
        _series("Drift over the run (from the fit)", [f"aliasByNode({STAB}.summary.drift_pct, 2, 3)",
                                                       f"alias({STAB}.summary.drift_pct_max, 'worst slice')"],
                (0, row, 12, 8), unit="percent", decimals=3,
                thresholds=_thresholds(("red", None), ("green", -1.0), ("red", 1.0)),
                description="(p1*(M-1) + p2*(M-1)^2) / p0 * 100 from the fit section."),
        _series("Ghost level (mean over slices)", [f"aliasByNode({STAB}.summary.ghost_mean, 2, 3)"],
                (12, row, 12, 8), thresholds=_thresholds(("green", None), ("orange", 3.0), ("red", 3.5))),
    ]
    row += 8
    panels.append(RowPanel(title="Per slice ($slice)", gridPos=GridPos(h=1, w=24, x=0, y=row)))
    row += 1
    per_slice = [
        ("SNR mean per slice", f"{STAB}.snr.mean.$slice", "none", None),
        ("SIfit sd[%] per slice", f"{STAB}.sifit.sdpct.$slice", "percent",
         _thresholds(("green", None), ("orange", 0.1), ("red", 0.25))),
        ("SI mean per slice", f"{STAB}.si.mean.$slice", "none", None),
        ("SI peak-to-peak P2P[%] per slice", f"{STAB}.si.p2ppct.$slice", "percent", None),
        ("Ghost mean per slice", f"{STAB}.ghost.mean.$slice", "none", None),
        ("Fit slope p1 per slice (signal units per measurement)", f"{STAB}.fit.p1.$slice", "none", None),
    ]
    for i, (title, target, unit, steps) in enumerate(per_slice):
        panels.append(_series(title, [f"aliasByNode({target}, 6)"], (12 * (i % 2), row + 8 * (i // 2), 12, 8),
                              unit=unit, thresholds=steps))
    row += 8 * ((len(per_slice) + 1) // 2)
    qa_row = qa_limit_panels(row)
    panels += qa_row
    row = max(p.gridPos.y + p.gridPos.h for p in qa_row)
    panels += fbirn_panels(row)
    templating = Templating(list=[
        _query_var("scanner", "hops.stability.*", "Scanner"),
        _query_var("coil", "hops.stability.$scanner.*", "Coil"),
        _query_var("slice", "hops.stability.$scanner.$coil.snr.mean.*", "Slice", multi=True, include_all=True,
                   all_value="*"),
    ])
    return Dashboard(title="Phantom stability overview", uid="hops-stability-overview",
                     description="MGH Stability phantom QA per scanner and coil (HOPS)",
                     tags=["hops", "phantom"], time=Time("now-2y", "now"), templating=templating,
                     annotations=qa_annotations(), panels=panels, timezone="browser").auto_panel_ids()


def fbirn_panels(row: int) -> list:
    """The fBIRN row: values from the ProcQA bucket (magickbox.qa, any vendor) under
    ``hops.stability.<scanner>.<coil>.fbirn.<metric>`` (README: "Phantom QA bucket")."""
    fb = f"{STAB}.fbirn"
    panels: list = [RowPanel(title="fBIRN phantom QA (any vendor: ProcQA bucket, central slice)",
                             gridPos=GridPos(h=1, w=24, x=0, y=row))]
    row += 1
    specs = [
        ("fBIRN SNR and SFNR", [f"alias({fb}.snr, 'SNR')", f"alias({fb}.sfnr, 'SFNR')"], "none", None,
         "SNR: mean / (SD of the odd-even difference image / sqrt(T)); SFNR: mean of signal / temporal "
         "fluctuation noise after a quadratic detrend, over the ROI."),
        ("fBIRN percent fluctuation", [f"aliasByNode({fb}.fluctuation_pct, 2, 3)"], "percent",
         _thresholds(("green", None), ("orange", 0.1), ("red", 0.25)),
         "100 x SD of the detrended ROI mean time series / its mean."),
        ("fBIRN drift over the run", [f"alias({fb}.drift_pct, 'from the fit')",
                                      f"alias({fb}.drift_raw_pct, 'raw signal')"], "percent",
         _thresholds(("green", None), ("orange", 1.0), ("red", 2.0)),
         "100 x (max - min) / mean of the quadratic fit, and of the raw ROI signal."),
        ("fBIRN radius of decorrelation (RDC)", [f"aliasByNode({fb}.rdc, 2, 3)"], "none", None,
         "Weisskoff analysis: CV(1) / CV(largest ROI), in pixels; lower means spatially correlated "
         "instability."),
        ("fBIRN ghost", [f"aliasByNode({fb}.ghost_pct, 2, 3)"], "percent",
         _thresholds(("green", None), ("orange", 3.0), ("red", 5.0)),
         "N/2 ghost: (ghost region - background) / phantom signal, in percent."),
        ("fBIRN centre-of-mass displacement", [f"aliasByNode({fb}.cmass.*.disp_mm, 6)"], "lengthmm", None,
         "max - min of the phantom's centre of mass over the run, per axis."),
        ("fBIRN SFNR per slice ($slice)", [f"aliasByNode({fb}.slice.$slice.sfnr, 6)"], "none", None,
         "SFNR of each slice whose ROI lies inside the phantom."),
        ("fBIRN Weisskoff CV: single pixel and largest ROI", [f"alias({fb}.weisskoff.cv.01, 'width 1')",
                                                             f"alias({fb}.weisskoff.cv.21, 'width 21')"],
         "percent", None, "Coefficient of variation of the detrended ROI mean for ROI widths 1 and 21."),
    ]
    for i, (title, targets, unit, steps, description) in enumerate(specs):
        panels.append(_series(title, targets, (12 * (i % 2), row + 8 * (i // 2), 12, 8), unit=unit,
                              thresholds=steps, description=description))
    return panels


def scanner_compare() -> Dashboard:
    metrics = ["snr_mean", "fluctuation_pct", "drift_pct", "ghost_mean", "si_p2p_pct_max", "snr_min"]
    metric_var = Template(name="metric", query=",".join(metrics), label="Summary metric", type="custom",
                          default="snr_mean", options=[{"text": m, "value": m, "selected": m == "snr_mean"}
                                                       for m in metrics])
    coil_var = _query_var("coil", "hops.stability.*.*", "Coil", multi=True, include_all=True, all_value="*")
    series = "hops.stability.*.$coil.summary.$metric"
    panels = [
        _series("$metric across scanners", [f"aliasByNode({series}, 2, 3)"], (0, 0, 24, 10),
                description="One summary metric for every scanner and coil."),
        _series("$metric relative to each scanner's 30-day moving median (%)",
                [f"aliasByNode(offset(asPercent({series}, movingMedian({series}, '30d'), 2, 3), -100), 2, 3)"],
                (0, 10, 24, 10), unit="percent",
                description="Deviation from the same scanner and coil's own 30-day moving median: comparable "
                            "across scanners with different baselines."),
    ]
    templating = Templating(list=[metric_var, coil_var])
    return Dashboard(title="Scanner compare", uid="hops-scanner-compare",
                     description="One phantom summary metric across all scanners (HOPS)",
                     tags=["hops", "phantom"], time=Time("now-2y", "now"), templating=templating,
                     panels=panels, timezone="browser").auto_panel_ids()


def dicom_node() -> Dashboard:
    node = f"{nm.PREFIX}.$node"
    rate = "scaleToSeconds({m}, 1)"
    panels = [
        _series("Instances received per second", [f"aliasByNode({rate.format(m=f'{node}.{nm.INSTANCES_RECEIVED}')}, 2)"],
                (0, 0, 12, 8), unit="reqps", draw_points=False),
        _series("Studies completed", [f"aliasByNode(summarize({node}.{nm.STUDIES_COMPLETED}, '1h', 'sum'), 2)"],
                (12, 0, 12, 8), draw_points=False),
        _series("Queue length and running jobs", [f"alias({node}.{nm.QUEUE_LENGTH}, 'queued')",
                                                  f"alias({node}.{nm.JOBS_RUNNING}, 'running')"],
                (0, 8, 12, 8), draw_points=False),
        _series("Jobs finished by status (per hour)",
                [f"aliasByNode(summarize({node}.jobs.{{{','.join(sorted(k for k in nm.JOB_STATUS_COUNTERS))}}}, "
                 f"'1h', 'sum'), 3)"],
                (12, 8, 12, 8), draw_points=False),
        _series("Failures: rejected associations/instances, failed and timed-out jobs (per hour)",
                [f"alias(summarize({node}.{nm.REJECTED}, '1h', 'sum'), 'rejected')",
                 f"alias(summarize(sumSeries({node}.{nm.JOB_STATUS_COUNTERS['failed']}, "
                 f"{node}.{nm.JOB_STATUS_COUNTERS['timeout']}), '1h', 'sum'), 'jobs failed or timed out')"],
                (0, 16, 12, 8), draw_points=False,
                thresholds=_thresholds(("green", None), ("red", 1))),
        _series("Study complete -> container start (s)", [f"alias({node}.{nm.START_LATENCY}, 'start latency')"],
                (12, 16, 12, 8), unit="s", thresholds=_thresholds(("green", None), ("orange", 1), ("red", 10))),
    ]
    templating = Templating(list=[_query_var("node", f"{nm.PREFIX}.*", "Node")])
    return Dashboard(title="DICOM node", uid="hops-dicom-node",
                     description="magickbox node: receive rate, studies, jobs, queue, failures (HOPS)",
                     tags=["hops", "magickbox"], time=Time("now-24h", "now"), refresh="1m",
                     templating=templating, panels=panels, timezone="browser").auto_panel_ids()


# --- QA (hops-qa): limits, status, rules, events, missed scans -------------------------------------------

STATUS_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "ok", "color": "green", "index": 0},
    "1": {"text": "tolerance", "color": "orange", "index": 1},
    "2": {"text": "action", "color": "red", "index": 2}}}]
STATUS_THRESHOLDS = _thresholds(("green", None), ("orange", 1), ("red", 2))
# Grafana asks Graphite for about one point per pixel; status and flags are consolidated by their
# maximum so that a flagged scan never averages away.


def _style(name: str, color: str, dash: bool = False, points: bool = False) -> dict:
    """A field override: fixed colour, dashed line and/or no points for one series name."""
    props = [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]
    if dash:
        props.append({"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 6]}})
    if not points:
        props.append({"id": "custom.showPoints", "value": "never"})
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


LIMIT_STYLES = [_style("value", "text", points=True), _style("center", "blue"),
                _style("ucl", "blue", dash=True), _style("lcl", "blue", dash=True),
                _style("tolerance_low", "orange", dash=True), _style("tolerance_high", "orange", dash=True),
                _style("action_low", "red", dash=True), _style("action_high", "red", dash=True)]


def qa_annotations(action_scans: bool = False) -> Annotations:
    """Service events (graphite-web events tagged hops-service-<scanner>) and, optionally,
    every scan at action level."""
    items = [{"name": "Service events", "datasource": DATASOURCE, "enable": True, "iconColor": "purple",
              "tags": f"{SERVICE_TAG}-$scanner"}]
    if action_scans:
        items.append({"name": "Action level", "datasource": DATASOURCE, "enable": True, "iconColor": "red",
                      "target": f"removeBelowValue({QA}.*.status, 2)"})
    return Annotations(list=items)


def _qa_control_chart(title: str, metric: str, grid: tuple[int, int, int, int], unit: str = "none") -> TimeSeries:
    """Value, centre, control limits and tolerance/action levels of one QA metric."""
    panel = _series(title, [f"aliasByNode({QA}.{metric}.{{value,center,ucl,lcl}}, 5)",
                            f"aliasByNode({QA}.{metric}.{{tolerance_low,tolerance_high,action_low,action_high}}, 5)"],
                    grid, unit=unit, description="hops-qa: the scans (value), the baseline centre and control "
                    "limits of each phase (a service event starts a new phase), and the tolerance (orange) and "
                    "action (red) levels.")
    panel.overrides = LIMIT_STYLES
    panel.legendCalcs = ["lastNotNull"]
    return panel


def qa_limit_panels(row: int) -> list:
    """The overview's QA row: the four summary metrics with their QA limits."""
    panels = [RowPanel(title="QA limits and levels (hops-qa)", gridPos=GridPos(h=1, w=24, x=0, y=row))]
    row += 1
    charts = [("SNR with QA limits", "snr_mean", "none"), ("Percent fluctuation with QA limits", "fluctuation_pct",
                                                           "percent"),
              ("Drift with QA limits", "drift_pct", "percent"), ("Ghost level with QA limits", "ghost_mean", "none")]
    for i, (title, metric, unit) in enumerate(charts):
        panels.append(_qa_control_chart(title, metric, (12 * (i % 2), row + 8 * (i // 2), 12, 8), unit))
    return panels


def _qa_status_panels(row: int) -> list:
    stat = Stat(title="Latest QA status per metric", dataSource=DATASOURCE, reduceCalc="lastNotNull",
                targets=[Target(target=f"aliasByNode(consolidateBy({QA}.*.status, 'max'), 4)", refId="A",
                                datasource=DATASOURCE)],
                gridPos=GridPos(h=4, w=16, x=0, y=row), graphMode="none", colorMode="background",
                mappings=STATUS_MAPPINGS, thresholds=STATUS_THRESHOLDS)
    overdue = Stat(title="Days since the last scan of $scanner", dataSource=DATASOURCE, reduceCalc="lastNotNull",
                   targets=[Target(target="alias(hops.qa.$scanner.days_since_scan, 'days')", refId="A",
                                   datasource=DATASOURCE)],
                   gridPos=GridPos(h=4, w=8, x=16, y=row), graphMode="none", decimals=1,
                   thresholds=_thresholds(("green", None), ("red", 8)))
    status = _series("QA status over time (0 ok, 1 tolerance, 2 action)",
                     [f"aliasByNode(consolidateBy({QA}.*.status, 'max'), 4)"],
                     (0, row + 4, 24, 7), thresholds=STATUS_THRESHOLDS,
                     description="Status of every scan per metric: a tolerance level crossed or a control rule "
                                 "fired (1), an action level crossed (2).")
    return [stat, overdue, status]


def _qa_rule_panels(row: int) -> list:
    rules = _series("Control rules fired: $metric", [f"aliasByNode(consolidateBy({QA}.$metric.rule_*, 'max'), 5)"],
                    (0, row, 12, 7),
                    description="1 where the rule fired at a scan (we1..we4 Western Electric, nelson2..8, ewma, "
                                "cusum; see stability_collector/qa/control.py).")
    ewma_panel = _series("EWMA of $metric and its limits", [f"aliasByNode({QA}.$metric.{{ewma,ewma_ucl,ewma_lcl}}, 5)"],
                         (12, row, 12, 7), description="The EWMA statistic reacts to small sustained shifts and "
                                                       "slow drifts earlier than single scans do.")
    ewma_panel.overrides = [_style("ewma", "text", points=True), _style("ewma_ucl", "blue", dash=True),
                            _style("ewma_lcl", "blue", dash=True)]
    return [rules, ewma_panel]


def _qa_scan_panels(row: int) -> list:
    return [_series("Days since the last phantom scan (all scanners)",
                    ["aliasByNode(consolidateBy(hops.qa.*.days_since_scan, 'max'), 2)"],
                    (0, row, 24, 7), thresholds=_thresholds(("green", None), ("red", 8)), draw_points=False,
                    description="hops-qa writes one point per day after each scan and one at every evaluation; "
                                "hops.qa.<scanner>.scan_overdue is 1 beyond the scanner's expected interval.")]


def phantom_qa() -> Dashboard:
    row = 0
    panels = [RowPanel(title="$scanner $coil: QA status", gridPos=GridPos(h=1, w=24, x=0, y=row))]
    panels += _qa_status_panels(row + 1)
    row += 12
    panels.append(RowPanel(title="Control chart: $metric", gridPos=GridPos(h=1, w=24, x=0, y=row)))
    panels.append(_qa_control_chart("$metric: scans, centre, control limits, tolerance and action levels", "$metric",
                                    (0, row + 1, 24, 10)))
    row += 11
    panels += _qa_rule_panels(row)
    row += 7
    panels += _qa_scan_panels(row)
    templating = Templating(list=[
        _query_var("scanner", "hops.stability.*", "Scanner"),
        _query_var("coil", "hops.stability.$scanner.*", "Coil"),
        _query_var("metric", f"{QA}.*", "Metric"),
    ])
    return Dashboard(title="Phantom QA", uid="hops-phantom-qa",
                     description="hops-qa: control charts with baselines per service phase, tolerance and action "
                                 "levels, control rules, missed scans (HOPS)",
                     tags=["hops", "phantom", "qa"], time=Time("now-2y", "now"), templating=templating,
                     annotations=qa_annotations(action_scans=True), panels=panels,
                     timezone="browser").auto_panel_ids()


DASHBOARDS = {
    "phantom-stability-overview.json": stability_overview,
    "phantom-qa.json": phantom_qa,
    "scanner-compare.json": scanner_compare,
    "dicom-node.json": dicom_node,
}


def render(builder) -> str:
    return json.dumps(builder().to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    status = 0
    for name, builder in DASHBOARDS.items():
        text = render(builder)
        path = HERE / name
        if args.check:
            current = path.read_text() if path.exists() else ""
            if current != text:
                status = 1
                sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                           f"{name} (committed)", f"{name} (generated)", n=1))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
