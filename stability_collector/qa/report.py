"""``hops-qa report``: a self-contained HTML page (and optionally a PDF) for the monthly QA record.

For one scanner: a control chart per coil and metric (matplotlib, Agg backend: values
coloured by status, centre line, control limits, tolerance and action levels per phase,
the provisional part of each baseline shaded, service events as vertical lines), the
service events, every flagged scan with its reasons, and missed scans.  Charts are
embedded as PNG data URIs, so the HTML file is one file to attach.  The evaluation always
uses the whole stored history (baselines need it); ``since``/``until`` only choose what is
shown and listed.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from ..metrics import SUMMARY_METRICS  # noqa: E402
from .config import QAConfig, describe_levels  # noqa: E402
from .control import RULES  # noqa: E402
from .evaluate import (  # noqa: E402
    STATUS_ACTION,
    STATUS_NAMES,
    STATUS_TOLERANCE,
    Evaluation,
    ScannerActivity,
    evaluate_series,
    read_series,
    scanner_activity,
)
from .events import EventStore, ServiceEvent  # noqa: E402
from .graphiteweb import GraphiteWeb  # noqa: E402

__all__ = ["Chart", "Violation", "QAReport", "build_report", "control_chart"]

STATUS_COLOURS = {0: "#2e7d32", STATUS_TOLERANCE: "#ef8f00", STATUS_ACTION: "#c62828"}


@dataclass
class Chart:
    key: str                 # "<coil>/<metric>"
    title: str
    figure: "plt.Figure"
    png: bytes


@dataclass
class Violation:
    when: int
    coil: str
    metric: str
    value: float
    status: int
    reasons: list[str]


@dataclass
class QAReport:
    scanner: str
    config: QAConfig
    since: int | None
    until: int
    generated: int
    charts: list[Chart] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    events: list[ServiceEvent] = field(default_factory=list)
    activity: ScannerActivity | None = None
    evaluations: list[Evaluation] = field(default_factory=list)

    def _time(self, epoch: int) -> str:
        return _dt.datetime.fromtimestamp(epoch, self.config.tzinfo).strftime("%Y-%m-%d %H:%M")

    def _gaps(self) -> list[tuple[int, int, float]]:
        if self.activity is None:
            return []
        return [(a, b, d) for a, b, d in self.activity.gaps() if b >= (self.since or 0) and a <= self.until]

    def html(self) -> str:
        esc = html.escape
        period = (f"{self._time(self.since)} – " if self.since else "all scans up to ") + self._time(self.until)
        scanner_cfg = self.config.for_scanner(self.scanner)
        out = [
            "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>Phantom QA report: {esc(self.scanner)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
            "text-align:left;vertical-align:top;font-size:90%}th{background:#eee}"
            ".s1{background:#fff3e0}.s2{background:#ffebee}figure{margin:1.5em 0}img{max-width:100%}"
            "figcaption{font-size:90%;color:#555}</style></head><body>",
            f"<h1>Phantom QA report: {esc(self.scanner)}</h1>",
            f"<p>Period: {esc(period)} ({esc(self.config.timezone or 'host time zone')}). "
            f"Generated {esc(self._time(self.generated))} by hops-qa.</p>",
        ]
        if self.activity is not None and self.activity.last_scan is not None:
            overdue = " <strong>— overdue</strong>" if self.activity.overdue else ""
            out.append(f"<p>Last scan: {esc(self._time(self.activity.last_scan))} "
                       f"({self.activity.days_since_scan:.1f} days before the report; expected every "
                       f"{scanner_cfg.expected_interval_days:g} days){overdue}.</p>")
        counts = {s: sum(1 for v in self.violations if v.status == s) for s in (STATUS_TOLERANCE, STATUS_ACTION)}
        out.append(f"<p><strong>{counts[STATUS_ACTION]}</strong> scan results at action level, "
                   f"<strong>{counts[STATUS_TOLERANCE]}</strong> at tolerance level, "
                   f"{len(self._gaps())} missed-scan interval(s) in the period.</p>")
        out.append("<h2>Method</h2><ul>")
        out.append(f"<li>Baseline: centre and sigma (mean moving range / 1.128) from the first "
                   f"{scanner_cfg.baseline_scans} scans of each phase; a service event starts a new phase. "
                   f"Limits: {'prediction limits (widened for the uncertainty of the baseline)' if self.config.prediction_limits else 'centre ± 3 sigma'}."
                   "</li>")
        out.append("<li>Control rules: " + "; ".join(f"<code>{r}</code> {esc(RULES[r])}" for r in scanner_cfg.rules)
                   + f" (a rule firing sets status {self.config.rule_status}).</li>")
        metrics = sorted({ev.key.metric for ev in self.evaluations})
        for line in describe_levels(self.config, self.scanner, metrics):
            out.append(f"<li>{esc(line)}</li>")
        out.append("</ul>")
        out.append("<h2>Service events</h2>")
        if self.events:
            out.append("<table><tr><th>when</th><th>coil</th><th>what</th></tr>")
            for e in self.events:
                out.append(f"<tr><td>{esc(self._time(e.when))}</td><td>{esc(e.coil or 'all')}</td>"
                           f"<td>{esc(e.what)}</td></tr>")
            out.append("</table>")
        else:
            out.append("<p>None recorded.</p>")
        out.append("<h2>Control charts</h2>")
        for chart in self.charts:
            data = base64.b64encode(chart.png).decode()
            out.append(f"<figure id='chart-{esc(chart.key.replace('/', '-'))}'>"
                       f"<img alt='{esc(chart.title)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{esc(chart.title)}</figcaption></figure>")
        out.append("<h2>Violations</h2>")
        if self.violations:
            out.append("<table id='violations'><tr><th>scan</th><th>coil</th><th>metric</th><th>value</th>"
                       "<th>status</th><th>why</th></tr>")
            for v in self.violations:
                out.append(f"<tr class='s{v.status}'><td>{esc(self._time(v.when))}</td><td>{esc(v.coil)}</td>"
                           f"<td>{esc(v.metric)}</td><td>{v.value:.6g}</td><td>{STATUS_NAMES[v.status]}</td>"
                           f"<td>{'<br>'.join(esc(r) for r in v.reasons)}</td></tr>")
            out.append("</table>")
        else:
            out.append("<p>No scan in the period crossed a level or fired a control rule.</p>")
        out.append("<h2>Missed scans</h2>")
        gaps = self._gaps()
        if gaps:
            out.append("<table id='missed'><tr><th>last scan before</th><th>next scan</th><th>days</th></tr>")
            for a, b, days in gaps:
                nxt = self._time(b) if self.activity and b != self.activity.now else "none yet"
                out.append(f"<tr><td>{esc(self._time(a))}</td><td>{esc(nxt)}</td><td>{days:.1f}</td></tr>")
            out.append("</table>")
        else:
            out.append("<p>None.</p>")
        out.append("<hr><p>Signature: ____________________________ &nbsp; Date: ______________</p></body></html>")
        return "\n".join(out) + "\n"

    def write_html(self, path: Path) -> None:
        path.write_text(self.html(), encoding="utf-8")

    def write_pngs(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for chart in self.charts:
            path = directory / f"{self.scanner}-{chart.key.replace('/', '-')}.png"
            path.write_bytes(chart.png)
            out.append(path)
        return out

    def write_pdf(self, path: Path) -> None:
        """Charts one per page, then the violations as text pages."""
        with PdfPages(path) as pdf:
            for chart in self.charts:
                pdf.savefig(chart.figure)
            lines = [f"Phantom QA report: {self.scanner} — violations", ""]
            for v in self.violations:
                lines.append(f"{self._time(v.when)}  {v.coil}  {v.metric}  {v.value:.6g}  {STATUS_NAMES[v.status]}")
                lines += [f"      {r}" for r in v.reasons]
            if not self.violations:
                lines.append("No scan in the period crossed a level or fired a control rule.")
            for start in range(0, len(lines), 55):
                fig = plt.figure(figsize=(8.27, 11.69))
                fig.text(0.05, 0.97, "\n".join(lines[start:start + 55]), va="top", family="monospace", fontsize=7)
                pdf.savefig(fig)
                plt.close(fig)

    def close(self) -> None:
        for chart in self.charts:
            plt.close(chart.figure)


def _step_line(ax, times: Sequence, values: np.ndarray, phases: np.ndarray, **style) -> None:
    """Draw a per-phase constant (or stepwise) level as horizontal segments."""
    label = style.pop("label", None)
    for p in np.unique(phases):
        idx = np.nonzero((phases == p) & np.isfinite(values))[0]
        if not len(idx):
            continue
        ax.plot([times[i] for i in idx], values[idx], drawstyle="steps-post", label=label, **style)
        label = None


def control_chart(ev: Evaluation, events: Sequence[ServiceEvent], tz, since: int | None, until: int) -> Chart:
    """One control chart of an evaluated series (only scans within [since, until] shown)."""
    mask = (ev.times <= until) & (ev.times >= (since or -np.inf))
    to_dt = lambda t: _dt.datetime.fromtimestamp(int(t), tz)  # noqa: E731
    times = [to_dt(t) for t in ev.times[mask]]
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=100)
    phases = ev.phase[mask]
    if len(times):
        ax.plot(times, ev.values[mask], color="#90a4ae", lw=1, zorder=1)
        _step_line(ax, times, ev.centre[mask], phases, color="#1565c0", lw=1.2, label="centre")
        _step_line(ax, times, ev.ucl[mask], phases, color="#1565c0", lw=1, ls="--", label="control limits")
        _step_line(ax, times, ev.lcl[mask], phases, color="#1565c0", lw=1, ls="--")
        for name, colour in (("tolerance_low", "#ef8f00"), ("tolerance_high", "#ef8f00"),
                             ("action_low", "#c62828"), ("action_high", "#c62828")):
            if name in ev.levels:
                kind = name.split("_")[0]
                label = kind if kind not in [line.get_label() for line in ax.lines] else None
                _step_line(ax, times, ev.levels[name][mask], phases, color=colour, lw=1, ls=":", label=label)
        provisional = ev.provisional[mask]
        label = "provisional baseline"
        for p in np.unique(phases[provisional]):
            idx = np.nonzero((phases == p) & provisional)[0]
            ax.axvspan(times[idx[0]] - _dt.timedelta(days=3), times[idx[-1]] + _dt.timedelta(days=3),
                       color="#e0e0e0", zorder=0, lw=0, label=label)
            label = None
        status = ev.status[mask]
        for s in (0, STATUS_TOLERANCE, STATUS_ACTION):
            idx = np.nonzero(status == s)[0]
            if len(idx):
                ax.scatter([times[i] for i in idx], ev.values[mask][idx], s=22 if s else 14, zorder=3,
                           color=STATUS_COLOURS[s], label=STATUS_NAMES[s])
    lo = times[0] if times else to_dt(since or until)
    hi = times[-1] if times else to_dt(until)
    shown = False
    for e in events:
        when = to_dt(e.when)
        if lo - _dt.timedelta(days=7) <= when <= hi + _dt.timedelta(days=7):
            ax.axvline(when, color="#6a1b9a", lw=1.2, label=None if shown else "service event")
            shown = True
            ax.annotate(e.what, (when, 0.97), xycoords=("data", "axes fraction"), xytext=(3, 0),
                        textcoords="offset points", color="#6a1b9a", fontsize=8, rotation=90, ha="left", va="top")
    group, _, name = ev.key.metric.partition(".")
    meaning = SUMMARY_METRICS.get(name, "").split(" (")[0].split(":")[0] if group == "summary" else ""
    title = f"{ev.key.scanner} {ev.key.coil} — {meaning + ' ' if meaning else ''}({ev.key.metric})"
    ax.set_title(title, fontsize=11, loc="left")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return Chart(f"{ev.key.coil}/{ev.key.node}", title, fig, buf.getvalue())


def build_report(config: QAConfig, web: GraphiteWeb, store: EventStore, scanner: str, since: int | None = None,
                 until: int | None = None, now: int | None = None) -> QAReport:
    """Read, evaluate and chart ``scanner``'s series (raises GraphiteWebError)."""
    now = int(time.time()) if now is None else now
    until = now if until is None else until
    series = read_series(web, config, [scanner], end=now)
    events = store.list(scanner)
    report = QAReport(scanner, config, since, until, now, events=[e for e in events if e.when <= until])
    report.activity = scanner_activity(series, config, min(now, until)).get(scanner)
    for s in series:
        ev = evaluate_series(s, events, config)
        report.evaluations.append(ev)
        report.charts.append(control_chart(ev, [e for e in events if e.applies_to(scanner, s.key.coil)],
                                           config.tzinfo, since, until))
        for i in np.nonzero(ev.status > 0)[0]:
            t = int(ev.times[i])
            if (since is None or t >= since) and t <= until:
                report.violations.append(Violation(t, s.key.coil, s.key.metric, float(ev.values[i]),
                                                   int(ev.status[i]), ev.reasons[i]))
    report.violations.sort(key=lambda v: (v.when, v.coil, v.metric))
    return report
