"""Evaluate stored phantom series: phases, baselines, levels, rules, missed scans → QA metrics.

Input: the series ``<prefix>.<scanner>.<coil>.<group>.<name>`` read from graphite-web's render
API (``summary.*`` from Siemens Stability reports, ``fbirn.*`` from the QA bucket), and the
service events of :mod:`.events`.  Output, per scan and time-stamped with the scan's time
(``hops.qa.<scanner>.<coil>.<metric>.<field>``, ``<metric>`` from :func:`.config.qa_node`):

========================  ==============================================================
``value``                 the metric itself (so one Grafana query draws the whole chart)
``status``                0 ok, 1 tolerance (a tolerance level crossed, or an enabled
                          control rule fired), 2 action (an action level crossed)
``center``                baseline centre of the scan's phase (provisional: mean so far)
``ucl``, ``lcl``          control limits (only once the phase's baseline is complete)
``tolerance_low`` ...     the four levels where configured (``tolerance_high``,
                          ``action_low``, ``action_high``), in the metric's units
``rule_<name>``           1 if the enabled rule fired at this scan, else 0
``ewma``, ``ewma_ucl``,   the EWMA statistic and its limits (when the ``ewma`` rule is on)
``ewma_lcl``
``phase``                 1, 2, ... (a service event starts the next phase)
``provisional``           1 while the phase has fewer scans than its baseline needs
========================  ==============================================================

and per scanner ``hops.qa.<scanner>.days_since_scan`` / ``scan_overdue`` (0/1, more days than
``expected_interval_days``): one point at each scan (0), one a day after it until the next scan,
and one at the evaluation time, so Grafana draws the saw-tooth and alerts on the last value.

Control rules are applied only once a phase has its full baseline; before that only
absolute levels count (relative levels need a baseline).  A phase is evaluated
retrospectively against its own baseline, so scans inside the baseline that lie beyond the
limits are flagged too (a baseline that is itself out of control should be noticed).
Evaluation is deterministic: re-running it re-sends identical values (Graphite keeps one
value per slot), so the whole history of a scanner is simply sent again when anything changed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..core.graphite import DeliveryError, GraphiteSender
from .config import LevelSet, QAConfig, qa_node
from .control import RULES, Baseline, estimate_baseline, ewma, rule_flags
from .events import EventStore, ServiceEvent, sync_events
from .graphiteweb import GraphiteWeb, GraphiteWebError

__all__ = ["STATUS_OK", "STATUS_TOLERANCE", "STATUS_ACTION", "STATUS_NAMES", "SeriesKey", "Series",
           "Evaluation", "ScannerActivity", "evaluate_series", "read_series", "series_targets",
           "result_lines", "scanner_activity", "QAEvaluator", "PassResult", "summarise"]

log = logging.getLogger("hops.qa")

STATUS_OK, STATUS_TOLERANCE, STATUS_ACTION = 0, 1, 2
STATUS_NAMES = {STATUS_OK: "ok", STATUS_TOLERANCE: "tolerance", STATUS_ACTION: "action"}
DAY = 86400
#: How far back the evaluator reads (the shipped retention keeps 30 years).
HISTORY_SECONDS = 30 * 366 * DAY


@dataclass(frozen=True, order=True)
class SeriesKey:
    scanner: str
    coil: str
    metric: str           # e.g. "summary.snr_mean", "fbirn.sfnr"

    @property
    def node(self) -> str:
        return qa_node(self.metric)

    def label(self) -> str:
        return f"{self.scanner}/{self.coil} {self.metric}"


@dataclass
class Series:
    key: SeriesKey
    times: np.ndarray     # epoch seconds, increasing, int64
    values: np.ndarray    # float64

    @classmethod
    def from_points(cls, key: SeriesKey, points: Iterable[tuple[int, float]]) -> "Series":
        clean = sorted({int(t): float(v) for t, v in points if v is not None and math.isfinite(v)}.items())
        return cls(key, np.array([t for t, _ in clean], dtype=np.int64), np.array([v for _, v in clean], dtype=float))


@dataclass
class Evaluation:
    """The QA verdict on every scan of one series (arrays aligned with ``times``; NaN = none)."""

    key: SeriesKey
    times: np.ndarray
    values: np.ndarray
    phase: np.ndarray                       # 0-based phase of each scan
    phase_events: list[ServiceEvent | None]  # the event that started each phase
    baselines: list[Baseline]
    provisional: np.ndarray                 # bool
    centre: np.ndarray
    ucl: np.ndarray
    lcl: np.ndarray
    levels: dict[str, np.ndarray]           # tolerance_low ... -> values
    flags: dict[str, np.ndarray]            # rule -> bool
    ewma: np.ndarray | None
    ewma_ucl: np.ndarray | None
    ewma_lcl: np.ndarray | None
    status: np.ndarray                      # int
    reasons: list[list[str]]
    levels_origin: str = ""
    level_set: LevelSet | None = None
    rules: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.times)

    @property
    def latest_status(self) -> int:
        return int(self.status[-1]) if len(self.status) else STATUS_OK


def _phases(times: np.ndarray, events: Sequence[ServiceEvent]) -> tuple[np.ndarray, list[ServiceEvent | None]]:
    """Phase index of each scan: scans at or after an event's time belong to its phase.
    Events before the first scan still start a phase (so the first scans get their own)."""
    ordered = sorted(events, key=lambda e: e.when)
    starts: list[ServiceEvent | None] = [None]
    phase = np.zeros(len(times), dtype=int)
    for ev in ordered:
        starts.append(ev)
        phase[times >= ev.when] = len(starts) - 1
    # renumber so that only phases that have scans remain, in order
    used = sorted(set(phase.tolist()))
    mapping = {old: new for new, old in enumerate(used)}
    return np.array([mapping[p] for p in phase], dtype=int), [starts[p] for p in used]


def _level_reason(name: str, value: float, level: float, spec, centre: float) -> str:
    kind, side = name.split("_")
    where = "below" if side == "low" else "above"
    how = f" ({spec.describe()} {centre:.6g})" if spec.percent else ""
    return f"{where} the {kind} level {level:.6g}{how}"


def evaluate_series(series: Series, events: Sequence[ServiceEvent], config: QAConfig) -> Evaluation:
    """Evaluate one series against its phases (from ``events`` of its scanner/coil)."""
    key = series.key
    scanner_cfg = config.for_scanner(key.scanner)
    rules = scanner_cfg.rules
    n = len(series.times)
    phase, phase_events = _phases(series.times, [e for e in events if e.applies_to(key.scanner, key.coil)])
    nan = lambda: np.full(n, np.nan)  # noqa: E731
    centre, ucl, lcl = nan(), nan(), nan()
    provisional = np.zeros(n, dtype=bool)
    level_set, origin = config.levels_for(key.scanner, key.metric)
    level_specs = level_set.items() if level_set else []
    levels = {name: nan() for name, _ in level_specs}
    flags = {rule: np.zeros(n, dtype=bool) for rule in rules}
    want_ewma = "ewma" in rules
    ewma_stat, ewma_hi, ewma_lo = (nan(), nan(), nan()) if want_ewma else (None, None, None)
    baselines: list[Baseline] = []
    for p in range(len(phase_events)):
        idx = np.nonzero(phase == p)[0]
        x = series.values[idx]
        base = estimate_baseline(x, scanner_cfg.baseline_scans, config.prediction_limits)
        baselines.append(base)
        complete = base.complete and math.isfinite(base.sigma)
        provisional[idx] = not complete
        if complete:
            centre[idx] = base.centre
            ucl[idx], lcl[idx] = base.ucl, base.lcl
            for rule, fired in rule_flags(x, base, rules, config.parameters).items():
                flags[rule][idx] = fired
            if want_ewma:
                stat, half = ewma(x, base, config.parameters)
                ewma_stat[idx], ewma_hi[idx], ewma_lo[idx] = stat, base.centre + half, base.centre - half
        else:
            centre[idx] = np.cumsum(x) / np.arange(1, len(x) + 1)   # provisional: mean so far
        for name, spec in level_specs:
            resolved = spec.resolve(base.centre if complete else None)
            if resolved is not None:
                levels[name][idx] = resolved
    status = np.zeros(n, dtype=int)
    reasons: list[list[str]] = [[] for _ in range(n)]
    for i in range(n):
        x = series.values[i]
        for name, spec in level_specs:
            level = levels[name][i]
            if math.isnan(level):
                continue
            crossed = x < level if name.endswith("_low") else x > level
            if crossed:
                status[i] = max(status[i], STATUS_ACTION if name.startswith("action") else STATUS_TOLERANCE)
                reasons[i].append(_level_reason(name, x, level, spec, baselines[phase[i]].centre))
        for rule in rules:
            if flags[rule][i]:
                status[i] = max(status[i], config.rule_status)
                reasons[i].append(f"{rule}: {RULES[rule]}")
    return Evaluation(key, series.times, series.values, phase, phase_events, baselines, provisional, centre, ucl,
                      lcl, levels, flags, ewma_stat, ewma_hi, ewma_lo, status, reasons, origin, level_set, rules)


def _fmt(value: float) -> str:
    return format(float(value), ".10g")


def result_lines(evaluation: Evaluation, qa_prefix: str) -> list[str]:
    """Graphite plaintext lines of every per-scan QA metric of ``evaluation``."""
    key = evaluation.key
    base = f"{qa_prefix}.{key.scanner}.{key.coil}.{key.node}"
    lines = []
    for i, t in enumerate(evaluation.times.tolist()):
        def put(name: str, value: float) -> None:
            if value is not None and math.isfinite(value):
                lines.append(f"{base}.{name} {_fmt(value)} {t}\n")
        put("value", evaluation.values[i])
        put("status", evaluation.status[i])
        put("phase", evaluation.phase[i] + 1)
        put("provisional", int(evaluation.provisional[i]))
        put("center", evaluation.centre[i])
        put("ucl", evaluation.ucl[i])
        put("lcl", evaluation.lcl[i])
        for name, values in evaluation.levels.items():
            put(name, values[i])
        if not evaluation.provisional[i]:
            for rule, fired in evaluation.flags.items():
                put(f"rule_{rule}", int(fired[i]))
        if evaluation.ewma is not None:
            put("ewma", evaluation.ewma[i])
            put("ewma_ucl", evaluation.ewma_ucl[i])
            put("ewma_lcl", evaluation.ewma_lcl[i])
    return lines


@dataclass
class ScannerActivity:
    """When a scanner was scanned (any coil, any metric) and whether it is overdue."""

    scanner: str
    scan_times: np.ndarray
    expected_interval_days: float
    now: int

    @property
    def last_scan(self) -> int | None:
        return int(self.scan_times[-1]) if len(self.scan_times) else None

    @property
    def days_since_scan(self) -> float | None:
        return None if self.last_scan is None else (self.now - self.last_scan) / DAY

    @property
    def overdue(self) -> bool:
        days = self.days_since_scan
        return days is not None and days > self.expected_interval_days

    def gaps(self) -> list[tuple[int, int, float]]:
        """Intervals without a scan longer than expected: (from, to, days); ``to`` = now for
        an interval still open."""
        out = []
        bounds = list(self.scan_times.tolist()) + [self.now]
        for a, b in zip(bounds, bounds[1:]):
            days = (b - a) / DAY
            if days > self.expected_interval_days:
                out.append((int(a), int(b), days))
        return out

    def lines(self, qa_prefix: str) -> list[str]:
        out = []
        times = self.scan_times.tolist()
        for i, start in enumerate(times):
            end = times[i + 1] if i + 1 < len(times) else self.now
            t = start
            while t < end:
                days = (t - start) / DAY
                out.append(f"{qa_prefix}.{self.scanner}.days_since_scan {_fmt(round(days, 4))} {t}\n")
                out.append(f"{qa_prefix}.{self.scanner}.scan_overdue "
                           f"{int(days > self.expected_interval_days)} {t}\n")
                t += DAY
        if times and self.now >= times[-1]:
            days = (self.now - times[-1]) / DAY
            out.append(f"{qa_prefix}.{self.scanner}.days_since_scan {_fmt(round(days, 4))} {self.now}\n")
            out.append(f"{qa_prefix}.{self.scanner}.scan_overdue {int(self.overdue)} {self.now}\n")
        return out


def scanner_activity(series: Iterable[Series], config: QAConfig, now: int) -> dict[str, ScannerActivity]:
    times: dict[str, set[int]] = {}
    for s in series:
        times.setdefault(s.key.scanner, set()).update(int(t) for t in s.times.tolist() if t <= now)
    return {name: ScannerActivity(name, np.array(sorted(ts), dtype=np.int64),
                                  config.for_scanner(name).expected_interval_days, now)
            for name, ts in sorted(times.items())}


def series_targets(config: QAConfig, scanners: Sequence[str] | None = None) -> list[str]:
    """render API targets covering the configured metrics (of ``scanners``, default all)."""
    targets = []
    for metric in config.metrics:
        explicit = {name: cfg.path for name, cfg in config.scanners.items() if cfg.path}
        if scanners:
            for name in scanners:
                path = explicit.get(name) or f"{config.prefix}.{name}"
                targets.append(f"{path}.*.{metric}")
        else:
            targets.append(f"{config.prefix}.*.*.{metric}")
            targets += [f"{path}.*.{metric}" for path in explicit.values()]
    return list(dict.fromkeys(targets))


def _parse_path(path: str, config: QAConfig) -> SeriesKey | None:
    for name, cfg in config.scanners.items():
        if cfg.path and path.startswith(cfg.path + "."):
            rest = path[len(cfg.path) + 1:].split(".", 1)
            return SeriesKey(name, rest[0], rest[1]) if len(rest) == 2 else None
    if not path.startswith(config.prefix + "."):
        return None
    parts = path[len(config.prefix) + 1:].split(".", 2)
    return SeriesKey(*parts) if len(parts) == 3 else None


def read_series(web: GraphiteWeb, config: QAConfig, scanners: Sequence[str] | None = None,
                start: int | None = None, end: int | None = None) -> list[Series]:
    """The configured metrics' series from graphite-web (raises GraphiteWebError)."""
    end = int(time.time()) if end is None else end
    start = end - HISTORY_SECONDS if start is None else start
    out: dict[SeriesKey, Series] = {}
    for rendered in web.render(series_targets(config, scanners), start, end):
        key = _parse_path(rendered.path, config)
        if key is None or not config.wants_metric(key.metric) or (scanners and key.scanner not in scanners):
            continue
        series = Series.from_points(key, rendered.points)
        if len(series.times):
            out[key] = series
    return [out[k] for k in sorted(out)]


@dataclass
class PassResult:
    """What one evaluation pass did."""

    evaluations: list[Evaluation] = field(default_factory=list)
    activity: dict[str, ScannerActivity] = field(default_factory=dict)
    lines_delivered: int = 0
    errors: list[str] = field(default_factory=list)
    undelivered_scanners: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class QAEvaluator:
    """Reads series, evaluates them and sends the results with the confirmed Graphite sender.

    ``sender`` ``None`` evaluates without sending (``--dry-run``)."""

    def __init__(self, config: QAConfig, web: GraphiteWeb, sender: GraphiteSender | None, store: EventStore,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.web = web
        self.sender = sender
        self.store = store
        self.clock = clock
        self._last_seen: dict[SeriesKey, int] = {}
        self._fingerprints: dict[str, tuple] = {}
        self._dirty: set[str] = set()

    def evaluate(self, scanners: Sequence[str] | None = None) -> tuple[list[Evaluation], dict[str, ScannerActivity],
                                                                      dict[str, list[str]]]:
        """Evaluate (without sending); returns evaluations, activity and the lines per scanner."""
        now = int(self.clock())
        series = read_series(self.web, self.config, scanners, end=now)
        events = self.store.list()
        evaluations = [evaluate_series(s, events, self.config) for s in series]
        activity = scanner_activity(series, self.config, now)
        lines: dict[str, list[str]] = {}
        for ev in evaluations:
            lines.setdefault(ev.key.scanner, []).extend(result_lines(ev, self.config.qa_prefix))
        for name, act in activity.items():
            lines.setdefault(name, []).extend(act.lines(self.config.qa_prefix))
        for s in series:
            self._last_seen[s.key] = max(self._last_seen.get(s.key, 0), int(s.times[-1]))
        return evaluations, activity, lines

    def run_pass(self, scanners: Sequence[str] | None = None) -> PassResult:
        """Evaluate ``scanners`` (default all) and deliver; one confirmed batch per scanner."""
        result = PassResult()
        try:
            result.evaluations, result.activity, lines = self.evaluate(scanners)
        except GraphiteWebError as exc:
            result.errors.append(str(exc))
            self._dirty.update(scanners or ["*"])
            return result
        for scanner in set(lines) | set(scanners or []) | {e.scanner for e in self.store.list()}:
            self._fingerprints[scanner] = self.store.fingerprint(scanner)
        for scanner, scanner_lines in sorted(lines.items()):
            if self.sender is None:
                continue
            try:
                self.sender.deliver("".join(scanner_lines))
            except DeliveryError as exc:
                result.errors.append(f"{scanner}: {exc}")
                result.undelivered_scanners.append(scanner)
                self._dirty.add(scanner)
                continue
            self._dirty.discard(scanner)
            result.lines_delivered += len(scanner_lines)
        if not scanners:
            self._dirty.discard("*")
        return result

    def changed_scanners(self) -> set[str]:
        """Scanners with a scan newer than the last evaluation (in the recent window), changed
        events, or an undelivered result."""
        now = int(self.clock())
        recent = read_series(self.web, self.config, start=now - int(self.config.recent_days * DAY), end=now)
        changed = set(self._dirty)
        for s in recent:
            if int(s.times[-1]) > self._last_seen.get(s.key, 0):
                changed.add(s.key.scanner)
        for scanner in {k.scanner for k in self._last_seen} | {e.scanner for e in self.store.list()}:
            if self.store.fingerprint(scanner) != self._fingerprints.get(scanner):
                changed.add(scanner)
        return changed

    def heartbeat_lines(self) -> list[str]:
        """``days_since_scan`` / ``scan_overdue`` at the current time, for every known scanner."""
        now = int(self.clock())
        by_scanner: dict[str, list[int]] = {}
        for key, last in self._last_seen.items():
            by_scanner.setdefault(key.scanner, []).append(last)
        out = []
        for scanner, lasts in sorted(by_scanner.items()):
            act = ScannerActivity(scanner, np.array([max(lasts)], dtype=np.int64),
                                  self.config.for_scanner(scanner).expected_interval_days, now)
            days = act.days_since_scan
            out.append(f"{self.config.qa_prefix}.{scanner}.days_since_scan {_fmt(round(days, 4))} {now}\n")
            out.append(f"{self.config.qa_prefix}.{scanner}.scan_overdue {int(act.overdue)} {now}\n")
        return out

    def run_forever(self, stop, on_pass: Callable[[PassResult], None] | None = None) -> None:
        """The long-running mode: a full pass at start and every ``full_interval`` seconds;
        in between, every ``poll_interval`` seconds, post pending events, re-evaluate scanners
        with new scans or changed events, and send the current ``days_since_scan``."""
        last_full = -math.inf
        while not stop.is_set():
            started = time.monotonic()
            result = PassResult()
            try:
                posted, errors = sync_events(self.store, self.web)
                for err in errors:
                    log.warning("%s (will retry)", err)
                if posted:
                    log.info("posted %d service event(s) to graphite-web", posted)
                if started - last_full >= self.config.full_interval:
                    result = self.run_pass()
                    if result.ok:
                        last_full = started
                else:
                    changed = self.changed_scanners()
                    if "*" in changed:
                        result = self.run_pass()
                    elif changed:
                        result = self.run_pass(sorted(changed))
                    if self.sender is not None and self._last_seen:
                        try:
                            self.sender.deliver("".join(self.heartbeat_lines()))
                        except DeliveryError as exc:
                            result.errors.append(f"days_since_scan: {exc}")
            except GraphiteWebError as exc:
                result.errors.append(str(exc))
            for err in result.errors:
                log.warning("%s (will retry)", err)
            if on_pass is not None:
                on_pass(result)
            stop.wait(max(0.0, self.config.poll_interval - (time.monotonic() - started)))


def summarise(evaluations: Sequence[Evaluation]) -> list[str]:
    """One line per series: latest scan, status and why."""
    lines = []
    for ev in evaluations:
        if not len(ev):
            continue
        i = len(ev) - 1
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(ev.times[i])))
        state = "provisional baseline" if ev.provisional[i] else f"phase {ev.phase[i] + 1}"
        why = "; ".join(ev.reasons[i]) or "in control"
        flagged = int((ev.status > 0).sum())
        lines.append(f"{ev.key.label()}: {when} UTC {ev.values[i]:.6g} -> {STATUS_NAMES[ev.latest_status]} "
                     f"({why}); {state}; {flagged} of {len(ev)} scans flagged")
    return lines
