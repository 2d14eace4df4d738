"""Configuration of ``hops-qa``: a TOML file validated at start-up; every error names the key.

```toml
graphite = "graphite.example.org:2003"         # carbon plaintext receiver (results go here)
graphite_web = "http://graphite.example.org"   # render API (series) and /events/ (annotations)
state_dir = "/var/lib/hops/qa"                 # service events are kept here
timezone = "Europe/Berlin"                     # for --when/--since dates and reports (default: host)
metrics = ["summary.snr_mean", "summary.fluctuation_pct", "summary.drift_pct",
           "summary.ghost_mean", "fbirn.*"]
baseline_scans = 20                            # N: scans of a phase that define its baseline
prediction_limits = true                       # widen limits for the uncertainty of a short baseline
rules = ["we1", "we2", "ewma"]                 # see stability_collector.qa.control.RULES
expected_interval_days = 8                     # a scanner without a scan for longer is overdue

[levels."summary.snr_mean"]                    # replaces the default for this metric
tolerance = { low = "-5%" }                    # % of the baseline centre ...
action = { low = "-10%", high = 400.0 }        # ... or absolute values

[scanners.prisma1]                             # per-scanner overrides
expected_interval_days = 15
baseline_scans = 12
rules = ["we1", "we2", "we3", "ewma"]
[scanners.prisma1.levels."summary.ghost_mean"]
action = { high = 3.2 }
```

Levels are looked up per scanner first, then globally, then in :data:`DEFAULT_LEVELS`; the
first entry whose key matches the metric (exact name or shell pattern such as ``fbirn.*snr*``)
wins.  A metric without levels is judged by the control rules alone.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.errors import ConfigError
from ..core.graphite import GraphiteAddress, sanitize_node
from ..metrics import resolve_timezone
from .control import MIN_BASELINE, RuleParameters, canonical_rule

__all__ = ["Level", "LevelSet", "DEFAULT_LEVELS", "DEFAULT_METRICS", "DEFAULT_RULES", "ScannerQA",
           "QAConfig", "build_qa_config", "load_qa_config", "qa_node"]

DEFAULT_METRICS = ("summary.snr_mean", "summary.fluctuation_pct", "summary.drift_pct", "summary.ghost_mean",
                   "fbirn.*")
DEFAULT_RULES = ("we1", "we2", "ewma")
DEFAULT_BASELINE_SCANS = 20
DEFAULT_INTERVAL_DAYS = 8.0

_PERCENT = re.compile(r"^\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


@dataclass(frozen=True)
class Level:
    """One level: an absolute value, or ``percent`` of the baseline centre (signed offset:
    ``-5`` = 5 % below the centre)."""

    value: float
    percent: bool = False

    def resolve(self, centre: float | None) -> float | None:
        """The level in the metric's units (``None`` if relative and there is no baseline yet)."""
        if not self.percent:
            return self.value
        if centre is None or not math.isfinite(centre):
            return None
        return centre * (1.0 + self.value / 100.0)

    def describe(self) -> str:
        return f"{self.value:+g} % of the baseline centre" if self.percent else f"{self.value:g}"


@dataclass(frozen=True)
class LevelSet:
    """Tolerance and action levels of one metric; any of the four may be absent."""

    tolerance_low: Level | None = None
    tolerance_high: Level | None = None
    action_low: Level | None = None
    action_high: Level | None = None
    basis: str = ""

    def items(self) -> list[tuple[str, Level]]:
        return [(name, lvl) for name, lvl in (("tolerance_low", self.tolerance_low),
                                               ("tolerance_high", self.tolerance_high),
                                               ("action_low", self.action_low),
                                               ("action_high", self.action_high)) if lvl is not None]


def _pct(v: float) -> Level:
    return Level(v, True)


_SNR_BASIS = ("HOPS starting point, relative to the site's own baseline: ACR's MRI QC manual and AAPM "
              "Report 100 ask for SNR to be trended against a baseline established on the scanner rather "
              "than an absolute value; the -5 % / -10 % steps are HOPS's choice (the -10 % level matches the "
              "SNR alert HOPS shipped before) and are not numbers quoted from either document")
_FLUCT_BASIS = ("HOPS starting point: stable scanners in fBIRN phantom QA (Friedman & Glover, JMRI "
                "23:827, 2006) show percent fluctuation well below 0.1 %; 0.1 % / 0.25 % are the dashboard "
                "and alert thresholds HOPS already shipped, not values stated in that paper")
_DRIFT_BASIS = ("HOPS starting point: fBIRN phantom QA (Friedman & Glover 2006) reports drift over a run "
                "of a few tenths of a percent on stable scanners; ±1 % (tolerance, the level of HOPS's "
                "existing drift alert) and ±2 % (action) are HOPS's choice")
_GHOST_BASIS = ("HOPS starting point for EPI ghost percentages of a phantom: sites running fBIRN QA use "
                "about 3 % as the acceptable mean ghost level (e.g. Dartmouth DBIC's published weekly QA); "
                "3.5 % is HOPS's existing ghost alert.  ACR's 2.5 % ghosting criterion is for the ACR "
                "phantom's spin-echo series and is deliberately not used for EPI stability scans")

#: Built-in levels by metric pattern (first match wins), with what each is based on.
DEFAULT_LEVELS: Mapping[str, LevelSet] = {
    "summary.snr_mean": LevelSet(tolerance_low=_pct(-5), action_low=_pct(-10), basis=_SNR_BASIS),
    "fbirn.snr*": LevelSet(tolerance_low=_pct(-5), action_low=_pct(-10), basis=_SNR_BASIS),
    "fbirn.sfnr*": LevelSet(tolerance_low=_pct(-5), action_low=_pct(-10), basis=_SNR_BASIS),
    "summary.fluctuation_pct": LevelSet(tolerance_high=Level(0.10), action_high=Level(0.25), basis=_FLUCT_BASIS),
    "fbirn.*fluct*": LevelSet(tolerance_high=Level(0.10), action_high=Level(0.25), basis=_FLUCT_BASIS),
    "summary.drift_pct": LevelSet(tolerance_low=Level(-1.0), tolerance_high=Level(1.0),
                                  action_low=Level(-2.0), action_high=Level(2.0), basis=_DRIFT_BASIS),
    "fbirn.*drift*": LevelSet(tolerance_low=Level(-1.0), tolerance_high=Level(1.0),
                              action_low=Level(-2.0), action_high=Level(2.0), basis=_DRIFT_BASIS),
    "summary.ghost_mean": LevelSet(tolerance_high=Level(3.0), action_high=Level(3.5), basis=_GHOST_BASIS),
    "fbirn.*ghost*": LevelSet(tolerance_high=Level(3.0), action_high=Level(3.5), basis=_GHOST_BASIS),
}


def qa_node(metric: str) -> str:
    """The node naming ``metric`` under ``hops.qa.<scanner>.<coil>``: ``summary.snr_mean`` ->
    ``snr_mean``, ``fbirn.sfnr`` -> ``fbirn_sfnr`` (one node, so every QA series has the same
    depth)."""
    if metric.startswith("summary."):
        metric = metric[len("summary."):]
    return sanitize_node(metric.replace(".", "_"))


@dataclass(frozen=True)
class ScannerQA:
    """Settings that can differ per scanner."""

    baseline_scans: int = DEFAULT_BASELINE_SCANS
    rules: tuple[str, ...] = DEFAULT_RULES
    expected_interval_days: float = DEFAULT_INTERVAL_DAYS
    levels: Mapping[str, LevelSet] = field(default_factory=dict)
    path: str | None = None       # series base path instead of <prefix>.<scanner>


@dataclass(frozen=True)
class QAConfig:
    graphite: GraphiteAddress | None = None
    graphite_web: str | None = None
    state_dir: Path = field(default_factory=lambda: Path(os.environ.get("XDG_STATE_HOME") or
                                                         Path.home() / ".local" / "state") / "hops-qa")
    timezone: str | None = None
    prefix: str = "hops.stability"
    qa_prefix: str = "hops.qa"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    prediction_limits: bool = True
    rule_status: int = 1
    parameters: RuleParameters = RuleParameters()
    defaults: ScannerQA = ScannerQA()
    scanners: Mapping[str, ScannerQA] = field(default_factory=dict)
    timeout: float = 30.0
    poll_interval: float = 60.0
    full_interval: float = 3600.0
    recent_days: float = 14.0

    def for_scanner(self, scanner: str) -> ScannerQA:
        return self.scanners.get(scanner, self.defaults)

    def levels_for(self, scanner: str, metric: str) -> tuple[LevelSet | None, str]:
        """The levels of ``metric`` on ``scanner`` and where they come from."""
        own = self.scanners.get(scanner)
        tables = []
        if own is not None:
            tables.append((own.levels, f"scanners.{scanner}.levels"))
        tables.append((self.defaults.levels, "levels"))
        tables.append((DEFAULT_LEVELS, "built-in default"))
        for table, origin in tables:
            if metric in table:
                return table[metric], f"{origin}.{metric}" if origin != "built-in default" else origin
            for pattern, levels in table.items():
                if fnmatch.fnmatchcase(metric, pattern):
                    return levels, (f"{origin}.{pattern}" if origin != "built-in default"
                                    else f"built-in default ({pattern})")
        return None, "none"

    def wants_metric(self, metric: str) -> bool:
        return any(fnmatch.fnmatchcase(metric, p) for p in self.metrics)

    @property
    def tzinfo(self) -> _dt.tzinfo | None:
        return resolve_timezone(self.timezone)

    def require_graphite(self) -> GraphiteAddress:
        if self.graphite is None:
            raise ConfigError("graphite", "no carbon address: give --graphite HOST:PORT or set 'graphite'")
        return self.graphite

    def require_web(self) -> str:
        if not self.graphite_web:
            raise ConfigError("graphite_web", "no graphite-web URL: give --graphite-web URL or set 'graphite_web'")
        return self.graphite_web


_TOP_KEYS = {"graphite", "graphite_web", "state_dir", "timezone", "prefix", "qa_prefix", "metrics",
             "baseline_scans", "prediction_limits", "rules", "rule_status", "ewma_lambda", "ewma_limit",
             "cusum_k", "cusum_h", "expected_interval_days", "levels", "scanners", "timeout", "poll_interval",
             "full_interval", "recent_days"}
_SCANNER_KEYS = {"baseline_scans", "rules", "expected_interval_days", "levels", "path"}
_LEVEL_KEYS = {"tolerance", "action"}
_SIDE_KEYS = {"low", "high"}
_PATH = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_METRIC = re.compile(r"[A-Za-z0-9_\-*?\[\]]+(\.[A-Za-z0-9_\-*?\[\]]+)*")


def _number(key: str, value: Any, minimum: float | None = None, maximum: float | None = None,
            exclusive_min: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, found {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(key, f"expected a finite number, found {value!r}")
    if minimum is not None and (v <= minimum if exclusive_min else v < minimum):
        raise ConfigError(key, f"must be {'>' if exclusive_min else '>='} {minimum:g}, found {value!r}")
    if maximum is not None and v > maximum:
        raise ConfigError(key, f"must be <= {maximum:g}, found {value!r}")
    return v


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected a whole number, found {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, found {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a non-empty string, found {value!r}")
    return value.strip()


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, found {value!r}")
    return value


def _check_keys(key: str, table: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(table) - known)
    if extra:
        where = f"{key}.{extra[0]}" if key else extra[0]
        raise ConfigError(where, f"unknown setting; known: {', '.join(sorted(known))}")


def _rules(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list of rule names, found {value!r}")
    out: list[str] = []
    for item in value:
        name = canonical_rule(item) if isinstance(item, str) else None
        if name is None:
            from .control import RULE_ALIASES, RULES
            raise ConfigError(key, f"unknown rule {item!r}; known: {', '.join([*RULES, *RULE_ALIASES])}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _level(key: str, value: Any, side: str) -> Level:
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if not m:
            raise ConfigError(key, f"expected a number or a percentage of the baseline such as '-5%', "
                                   f"found {value!r}")
        pct = float(m.group(2))
        sign = m.group(1)
        if side == "low":
            if sign == "+" and pct != 0:
                raise ConfigError(key, f"{value!r} would put the low level above the baseline centre; "
                                       "write it as '-N%'")
            return Level(-pct, True)
        if sign == "-" and pct != 0:
            raise ConfigError(key, f"{value!r} would put the high level below the baseline centre; "
                                   "write it as '+N%'")
        return Level(pct, True)
    return Level(_number(key, value))


def _level_set(key: str, value: Any) -> LevelSet:
    table = _table(key, value)
    _check_keys(key, table, _LEVEL_KEYS)
    levels: dict[str, Level] = {}
    for kind in ("tolerance", "action"):
        if kind not in table:
            continue
        sides = _table(f"{key}.{kind}", table[kind])
        _check_keys(f"{key}.{kind}", sides, _SIDE_KEYS)
        for side in ("low", "high"):
            if side in sides:
                levels[f"{kind}_{side}"] = _level(f"{key}.{kind}.{side}", sides[side], side)
        low, high = levels.get(f"{kind}_low"), levels.get(f"{kind}_high")
        if low and high and low.percent == high.percent and low.value >= high.value:
            raise ConfigError(f"{key}.{kind}", f"low ({low.describe()}) must be below high ({high.describe()})")
    if not levels:
        raise ConfigError(key, "expected 'tolerance' and/or 'action' with 'low' and/or 'high'")
    for side, outside in (("low", lambda t, a: t.value < a.value), ("high", lambda t, a: t.value > a.value)):
        tol, act = levels.get(f"tolerance_{side}"), levels.get(f"action_{side}")
        if tol and act and tol.percent == act.percent and outside(tol, act):
            raise ConfigError(f"{key}.tolerance.{side}", f"the tolerance level ({tol.describe()}) lies beyond the "
                                                         f"action level ({act.describe()})")
    return LevelSet(**levels, basis="site configuration")


def _levels(key: str, value: Any) -> dict[str, LevelSet]:
    table = _table(key, value)
    out = {}
    for metric, entry in table.items():
        if not _METRIC.fullmatch(metric):
            raise ConfigError(f"{key}.{metric}", "not a metric name or pattern such as 'summary.snr_mean' "
                                                 "or 'fbirn.*'")
        out[metric] = _level_set(f"{key}.{metric}", entry)
    return out


def _scanner(key: str, value: Any, base: ScannerQA) -> ScannerQA:
    table = _table(key, value)
    _check_keys(key, table, _SCANNER_KEYS)

    def k(name: str) -> str:
        return f"{key}.{name}" if key else name

    out = base
    if "baseline_scans" in table:
        out = replace(out, baseline_scans=_integer(k("baseline_scans"), table["baseline_scans"], MIN_BASELINE))
    if "rules" in table:
        out = replace(out, rules=_rules(k("rules"), table["rules"]))
    if "expected_interval_days" in table:
        out = replace(out, expected_interval_days=_number(k("expected_interval_days"),
                                                          table["expected_interval_days"], 0, exclusive_min=True))
    out = replace(out, levels=_levels(k("levels"), table["levels"]) if "levels" in table else {})
    if "path" in table:
        path = _string(k("path"), table["path"])
        if not _PATH.fullmatch(path):
            raise ConfigError(k("path"), f"not a Graphite path: {path!r}")
        out = replace(out, path=path)
    return out


def build_qa_config(values: Mapping[str, Any]) -> QAConfig:
    """Validate a mapping of settings (from TOML and/or flags; ``None`` = unset)."""
    v = {k: val for k, val in values.items() if val is not None}
    _check_keys("", v, _TOP_KEYS)
    kwargs: dict[str, Any] = {}
    if "graphite" in v:
        kwargs["graphite"] = GraphiteAddress.parse(_string("graphite", v["graphite"]))
    if "graphite_web" in v:
        url = _string("graphite_web", v["graphite_web"]).rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError("graphite_web", f"expected an http:// or https:// URL, found {url!r}")
        kwargs["graphite_web"] = url
    if "state_dir" in v:
        kwargs["state_dir"] = Path(_string("state_dir", v["state_dir"])).expanduser()
    if "timezone" in v:
        kwargs["timezone"] = _string("timezone", v["timezone"])
        resolve_timezone(kwargs["timezone"], "timezone")
    for key in ("prefix", "qa_prefix"):
        if key in v:
            path = _string(key, v[key])
            if not _PATH.fullmatch(path):
                raise ConfigError(key, f"not a Graphite path: {path!r}")
            kwargs[key] = path
    if "metrics" in v:
        metrics = v["metrics"]
        if not isinstance(metrics, (list, tuple)) or not metrics:
            raise ConfigError("metrics", f"expected a non-empty list of metric names or patterns, found {metrics!r}")
        for i, m in enumerate(metrics):
            if not isinstance(m, str) or not _METRIC.fullmatch(m) or m.count(".") < 1:
                raise ConfigError(f"metrics[{i}]", f"expected '<group>.<name>' such as 'summary.snr_mean' or "
                                                   f"'fbirn.*', found {m!r}")
        kwargs["metrics"] = tuple(metrics)
    if "prediction_limits" in v:
        if not isinstance(v["prediction_limits"], bool):
            raise ConfigError("prediction_limits", f"expected true or false, found {v['prediction_limits']!r}")
        kwargs["prediction_limits"] = v["prediction_limits"]
    if "rule_status" in v:
        kwargs["rule_status"] = _integer("rule_status", v["rule_status"], 1)
        if kwargs["rule_status"] > 2:
            raise ConfigError("rule_status", f"must be 1 (tolerance) or 2 (action), found {v['rule_status']!r}")
    params = RuleParameters()
    if "ewma_lambda" in v:
        params = replace(params, ewma_lambda=_number("ewma_lambda", v["ewma_lambda"], 0, 1, exclusive_min=True))
    if "ewma_limit" in v:
        params = replace(params, ewma_limit=_number("ewma_limit", v["ewma_limit"], 0, exclusive_min=True))
    if "cusum_k" in v:
        params = replace(params, cusum_k=_number("cusum_k", v["cusum_k"], 0))
    if "cusum_h" in v:
        params = replace(params, cusum_h=_number("cusum_h", v["cusum_h"], 0, exclusive_min=True))
    kwargs["parameters"] = params
    for key, minimum in (("timeout", 0.1), ("poll_interval", 1.0), ("full_interval", 1.0), ("recent_days", 1.0)):
        if key in v:
            kwargs[key] = _number(key, v[key], minimum)
    defaults = _scanner("", {k: v[k] for k in ("baseline_scans", "rules", "expected_interval_days", "levels")
                             if k in v}, ScannerQA())
    kwargs["defaults"] = defaults
    scanners: dict[str, ScannerQA] = {}
    for name, entry in _table("scanners", v.get("scanners", {})).items():
        key = f"scanners.{name}"
        if sanitize_node(name) != name:
            raise ConfigError(key, "a scanner name may only contain letters, digits, '_' and '-'")
        own = _scanner(key, entry, replace(defaults, levels={}))
        scanners[name] = own
    kwargs["scanners"] = scanners
    return QAConfig(**kwargs)


def load_qa_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> QAConfig:
    """Read and validate a TOML config file (``None``: defaults only); ``overrides`` (flags)
    win over the file."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    values.update({k: val for k, val in (overrides or {}).items() if val is not None})
    return build_qa_config(values)


def describe_levels(config: QAConfig, scanner: str, metrics: Sequence[str]) -> list[str]:
    """Human-readable lines: each metric's levels, where they come from and their basis."""
    lines = []
    for metric in metrics:
        levels, origin = config.levels_for(scanner, metric)
        if levels is None:
            lines.append(f"{metric}: no tolerance/action levels (control rules only)")
            continue
        parts = ", ".join(f"{name.replace('_', ' ')} {lvl.describe()}" for name, lvl in levels.items())
        lines.append(f"{metric}: {parts} [{origin}] — {levels.basis}")
    return lines
