"""Routing rules: which of a job's files go to which DICOM nodes (MagickBox's routing.json).

The file format is MagickBox's, as its manual documents it::

    {"routing": [
      {"name": "ProcRSI results to the PACS",
       "AETitleIn": "ProcRSI",            # regular expression, called AE title of the job
       "AETitleFrom": "PACS",             # regular expression, calling AE title (optional)
       "status": 1,                       # 0 disables the rule (default 1)
       "enabled": "T",                    # "F" disables the rule (default "T")
       "RouteDirectory": "OUTPUT",        # or "INPUT": route the job's input instead
       "send": [
         {"success": {"IP": "10.0.0.5", "PORT": "104", "AETitleSender": "me", "AETitleTo": "PACS",
                      "break": 1, "which": [{"0008,103e": ".*T1.*"}]},
          "failed":  {"IP": "$me", "PORT": "$port", "AETitleSender": "me", "AETitleTo": "OSIRIX"}}
       ],
       "break": 0}
    ]}

Semantics (the manual's, where MagickBox's own code differed):

* A rule applies when its ``AETitleIn`` matches the job's called AE title and its
  ``AETitleFrom`` matches the calling AE title (a missing key matches anything, but a rule
  must have at least one of them).  Patterns match the whole title, case-insensitively.
* ``status: 0`` or ``enabled: "F"`` disables a rule.
* The keys of each ``send`` entry are regular expressions matched (whole, case-insensitive)
  against ``proc.json``'s ``success`` value; every matching destination receives the files,
  in order.  ``break: 1`` on a destination stops the rule's remaining destinations **only
  when the send to it succeeded**: a failed send falls through to the next destination,
  so ``break`` makes a fail-over chain.
* ``which`` (on a destination) selects files: a file is sent when at least one entry
  matches, an entry matching when every tag's value (``"gggg,eeee"``) matches its regular
  expression (whole value; multi-valued elements joined with ``\\``).
* ``break: 1`` on a rule stops the evaluation of later rules once the rule applied.
* ``$me`` / ``$port`` in ``IP`` / ``PORT`` are the node's own address and DICOM port.
* JSON with ``//`` and ``/* */`` comments and trailing commas is accepted (the manual's
  examples have comments).

Extensions:

* ``ClassifyType`` on a rule: a regular expression (or a list of them) that must match at
  least one of the job's series classification types (``classifyRules.json``).
* Return to the caller: ``"AETitleTo": "$caller"`` sends to the calling AE title; its
  address comes from the node's table of known AE titles (``[routing.known_aes]``), as does
  the address of any ``AETitleTo`` given without ``IP``/``PORT``.
* ``retry`` on a destination: ``{"count": 5, "backoff": 30}`` (attempts after the first,
  and the first wait in seconds, doubled after each attempt; default 3 and 30 s).
* ``sendErrorAsDcm: 1`` on a rule: when the job did not succeed, a DICOM report of the
  end of ``processing.log`` is sent along with the files.

Validation happens at load: :class:`RoutingError` names the rule (index and name) and the
key.  Nothing here touches the network: :mod:`magickbox.results.send` does the sending.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from stability_collector.core.errors import ConfigError
from stability_collector.core.values import parse_bool

from ..model import AE_TITLE
from .send import Destination, SendReport

__all__ = ["RoutingError", "RoutingTable", "RoutingRule", "RouteTarget", "RoutingContext", "RoutePlan",
           "PlannedSend", "load_rules", "parse_rules", "select_files", "execute_plan", "PlanOutcome"]

_RULE_KEYS = {"name", "description", "comment", "AETitleIn", "AETitleFrom", "status", "enabled", "send", "break",
              "RouteDirectory", "ClassifyType", "sendErrorAsDcm"}
_DEST_KEYS = {"IP", "PORT", "AETitleSender", "AETitleTo", "break", "which", "retry", "description", "comment"}
_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)?")
DEFAULT_RETRY_COUNT = 3
DEFAULT_RETRY_BACKOFF = 30.0


class RoutingError(ValueError):
    """routing.json is not valid; the message names the rule and the key."""


@dataclass(frozen=True)
class RoutingContext:
    """What routing decides on: the job's AE titles, its ``proc.json`` success value and
    the classification types of its series."""
    called_ae: str
    calling_ae: str
    success: str
    classify_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RouteTarget:
    """One destination of a rule, as written (placeholders not resolved yet)."""
    pattern: str                       # matched against proc.json's success value
    host: str
    port: str
    calling_ae: str
    called_ae: str
    stop_after_success: bool = False   # 'break': 1
    which: tuple[tuple[tuple[int, re.Pattern[str]], ...], ...] = ()
    retry_count: int = DEFAULT_RETRY_COUNT
    retry_backoff: float = DEFAULT_RETRY_BACKOFF

    def matches(self, success: str) -> bool:
        return re.fullmatch(self.pattern, success, re.IGNORECASE) is not None


@dataclass(frozen=True)
class RoutingRule:
    index: int
    name: str
    called_pattern: str | None
    calling_pattern: str | None
    enabled: bool
    directory: str                     # "OUTPUT" or "INPUT"
    targets: tuple[RouteTarget, ...]
    stop_after: bool = False           # rule-level 'break'
    classify_patterns: tuple[str, ...] = ()
    send_error_report: bool = False

    @property
    def label(self) -> str:
        return f"rule {self.index}" + (f" ({self.name!r})" if self.name else "")

    def why_not(self, ctx: RoutingContext) -> str | None:
        """None when the rule applies to ``ctx``, else the reason it does not."""
        if not self.enabled:
            return "disabled"
        if self.called_pattern is not None and not re.fullmatch(self.called_pattern, ctx.called_ae, re.IGNORECASE):
            return f"AETitleIn {self.called_pattern!r} does not match called AE {ctx.called_ae!r}"
        if self.calling_pattern is not None and not re.fullmatch(self.calling_pattern, ctx.calling_ae,
                                                                 re.IGNORECASE):
            return f"AETitleFrom {self.calling_pattern!r} does not match calling AE {ctx.calling_ae!r}"
        if self.classify_patterns and not any(re.fullmatch(p, t, re.IGNORECASE)
                                              for p in self.classify_patterns for t in ctx.classify_types):
            return (f"ClassifyType {list(self.classify_patterns)} matches none of the series types "
                    f"{sorted(ctx.classify_types)}")
        return None


@dataclass(frozen=True)
class PlannedSend:
    """A destination that fires, with its address resolved."""
    target: RouteTarget
    destination: Destination


@dataclass(frozen=True)
class RoutePlan:
    """What one applicable rule sends: the directory and the destinations in order."""
    rule: RoutingRule
    directory: str
    sends: tuple[PlannedSend, ...]
    unresolved: tuple[str, ...] = ()   # destinations that fire but have no address


@dataclass(frozen=True)
class RoutingTable:
    rules: tuple[RoutingRule, ...] = ()
    source: str = ""

    def plan(self, ctx: RoutingContext, me: tuple[str, int] = ("127.0.0.1", 104),
             known_aes: Mapping[str, tuple[str, int]] | None = None) -> list[RoutePlan]:
        """The rules that apply to ``ctx`` with the destinations that fire, in order."""
        return [p for p, _ in self._evaluate(ctx, me, known_aes or {}) if p is not None]

    def explain(self, ctx: RoutingContext, me: tuple[str, int] = ("127.0.0.1", 104),
                known_aes: Mapping[str, tuple[str, int]] | None = None) -> list[str]:
        """One line per rule and destination saying what would happen and why."""
        lines: list[str] = []
        for plan_or_none, reason in self._evaluate(ctx, me, known_aes or {}, explain=True):
            lines.extend(reason)
        if not self.rules:
            lines.append("no routing rules")
        return lines

    def _evaluate(self, ctx: RoutingContext, me: tuple[str, int], known_aes: Mapping[str, tuple[str, int]],
                  explain: bool = False):
        for rule in self.rules:
            why = rule.why_not(ctx)
            if why is not None:
                yield None, [f"{rule.label}: not applied: {why}"]
                continue
            sends: list[PlannedSend] = []
            unresolved: list[str] = []
            notes = [f"{rule.label}: applies; routes {rule.directory}"]
            for target in rule.targets:
                if not target.matches(ctx.success):
                    notes.append(f"  {target.pattern!r} -> {target.called_ae}: skipped, success value "
                                 f"{ctx.success!r} does not match")
                    continue
                try:
                    destination = resolve(target, ctx, me, known_aes)
                except RoutingError as exc:
                    unresolved.append(str(exc))
                    notes.append(f"  {target.pattern!r} -> {target.called_ae}: cannot send: {exc}")
                    continue
                sends.append(PlannedSend(target, destination))
                extra = []
                if target.stop_after_success:
                    extra.append("stops the rule's later destinations if it succeeds")
                if target.which:
                    extra.append(f"only files matching {len(target.which)} 'which' filter(s)")
                notes.append(f"  {target.pattern!r} -> {destination}: sends"
                             + (f" ({'; '.join(extra)})" if extra else ""))
            if rule.send_error_report and ctx.success.lower() not in ("success", "partial") and sends:
                notes.append("  with an error report (end of processing.log) as DICOM")
            yield RoutePlan(rule, rule.directory, tuple(sends), tuple(unresolved)), notes
            if rule.stop_after:
                if explain:
                    notes.append(f"{rule.label}: 'break' stops the evaluation of later rules")
                return


def resolve(target: RouteTarget, ctx: RoutingContext, me: tuple[str, int],
            known_aes: Mapping[str, tuple[str, int]]) -> Destination:
    """The destination's address with ``$me``, ``$port`` and ``$caller`` filled in."""
    called = ctx.calling_ae if target.called_ae == "$caller" else target.called_ae
    host, port = target.host, target.port
    if host == "$caller" or port == "$caller" or (not host and not port):
        if called not in known_aes:
            raise RoutingError(f"no address known for AE title {called!r} (add it to [routing.known_aes])")
        host, port_number = known_aes[called]
        return Destination(host, port_number, called, target.calling_ae)
    host = me[0] if host == "$me" else host
    port = str(me[1]) if port == "$port" else port
    return Destination(host, int(port), called, target.calling_ae)


# -- loading and validation --------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    """Remove // and /* */ comments and trailing commas outside strings."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
            continue
        if c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return re.sub(r",(\s*[\]}])", r"\1", "".join(out))


def _regex(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RoutingError(f"{where}: {key!r} must be a string (a regular expression), not {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise RoutingError(f"{where}: {key!r} is not a valid regular expression {value!r}: {exc}") from None
    return value


def _flag(where: str, key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    try:
        return parse_bool(key, value)
    except ConfigError:
        raise RoutingError(f"{where}: {key!r} must be 0/1 or \"T\"/\"F\", not {value!r}") from None


def _target(where: str, pattern: str, spec: Any) -> RouteTarget:
    where = f"{where}, send entry {pattern!r}"
    _regex(where, "key", pattern)
    if not isinstance(spec, dict):
        raise RoutingError(f"{where}: must be an object with IP, PORT, AETitleSender, AETitleTo")
    unknown = set(spec) - _DEST_KEYS
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_DEST_KEYS)})")
    for key in ("AETitleSender", "AETitleTo"):
        if key not in spec:
            raise RoutingError(f"{where}: {key!r} is missing")
        if not isinstance(spec[key], str) or not (AE_TITLE.fullmatch(spec[key].strip()) or spec[key] == "$caller"):
            raise RoutingError(f"{where}: {key!r} must be an AE title (1-16 characters, no backslash), "
                               f"not {spec[key]!r}")
    if spec["AETitleSender"] == "$caller":
        raise RoutingError(f"{where}: 'AETitleSender' cannot be '$caller'")
    host = spec.get("IP", "")
    port = spec.get("PORT", "")
    if not isinstance(host, str):
        raise RoutingError(f"{where}: 'IP' must be a string, not {host!r}")
    if isinstance(port, int) and not isinstance(port, bool):
        port = str(port)
    if not isinstance(port, str):
        raise RoutingError(f"{where}: 'PORT' must be a number or \"$port\", not {port!r}")
    if bool(host) != bool(port):
        raise RoutingError(f"{where}: give both 'IP' and 'PORT', or neither (address from [routing.known_aes])")
    if port and port not in ("$port", "$caller") and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise RoutingError(f"{where}: 'PORT' must be 1-65535 or \"$port\", not {port!r}")
    which: list[tuple[tuple[int, re.Pattern[str]], ...]] = []
    raw_which = spec.get("which", [])
    if isinstance(raw_which, dict):
        raw_which = [raw_which]
    if not isinstance(raw_which, list):
        raise RoutingError(f"{where}: 'which' must be a list of {{\"gggg,eeee\": regex}} objects")
    for n, entry in enumerate(raw_which):
        if not isinstance(entry, dict) or not entry:
            raise RoutingError(f"{where}: 'which' entry {n} must be a non-empty {{\"gggg,eeee\": regex}} object")
        conditions = []
        for tag_text, pattern_text in entry.items():
            m = _TAG.fullmatch(tag_text.strip())
            if not m:
                raise RoutingError(f"{where}: 'which' entry {n}: {tag_text!r} is not a tag like \"0008,103e\"")
            _regex(f"{where}, 'which' entry {n}", tag_text, pattern_text)
            conditions.append(((int(m.group(1), 16) << 16) | int(m.group(2), 16),
                               re.compile(pattern_text, re.IGNORECASE | re.DOTALL)))
        which.append(tuple(conditions))
    retry = spec.get("retry", {})
    if not isinstance(retry, dict) or set(retry) - {"count", "backoff"}:
        raise RoutingError(f"{where}: 'retry' must be {{\"count\": N, \"backoff\": SECONDS}}")
    count = retry.get("count", DEFAULT_RETRY_COUNT)
    backoff = retry.get("backoff", DEFAULT_RETRY_BACKOFF)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1000:
        raise RoutingError(f"{where}: 'retry.count' must be an integer 0-1000, not {count!r}")
    if not isinstance(backoff, (int, float)) or isinstance(backoff, bool) or not 0 <= backoff <= 86400:
        raise RoutingError(f"{where}: 'retry.backoff' must be 0-86400 seconds, not {backoff!r}")
    return RouteTarget(pattern, host.strip(), port, spec["AETitleSender"].strip(), spec["AETitleTo"].strip(),
                       _flag(where, "break", spec.get("break"), False), tuple(which), count, float(backoff))


def _rule(index: int, spec: Any) -> RoutingRule:
    where = f"rule {index}"
    if not isinstance(spec, dict):
        raise RoutingError(f"{where}: must be an object, not {type(spec).__name__}")
    name = spec.get("name", "")
    if not isinstance(name, str):
        raise RoutingError(f"{where}: 'name' must be a string")
    if name:
        where += f" ({name!r})"
    unknown = set(spec) - _RULE_KEYS
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_RULE_KEYS)})")
    called = _regex(where, "AETitleIn", spec["AETitleIn"]) if "AETitleIn" in spec else None
    calling = _regex(where, "AETitleFrom", spec["AETitleFrom"]) if "AETitleFrom" in spec else None
    if called is None and calling is None:
        raise RoutingError(f"{where}: needs 'AETitleIn' or 'AETitleFrom' (use \".*\" for every job)")
    status = spec.get("status", 1)
    if status not in (0, 1, "0", "1") or isinstance(status, bool):
        raise RoutingError(f"{where}: 'status' must be 0 or 1, not {status!r}")
    enabled = _flag(where, "enabled", spec.get("enabled"), True) and int(status) == 1
    directory = spec.get("RouteDirectory", "OUTPUT")
    if not isinstance(directory, str) or directory.upper() not in ("OUTPUT", "INPUT"):
        raise RoutingError(f"{where}: 'RouteDirectory' must be \"OUTPUT\" or \"INPUT\", not {directory!r}")
    sends = spec.get("send")
    if isinstance(sends, dict):
        sends = [sends]
    if not isinstance(sends, list) or not sends:
        raise RoutingError(f"{where}: 'send' must be a non-empty list of {{\"success regex\": destination}}")
    targets = []
    for entry in sends:
        if not isinstance(entry, dict):
            raise RoutingError(f"{where}: each 'send' entry must be an object")
        for pattern, dest in entry.items():
            targets.append(_target(where, pattern, dest))
    classify = spec.get("ClassifyType", ())
    if isinstance(classify, str):
        classify = (classify,)
    if not isinstance(classify, (list, tuple)):
        raise RoutingError(f"{where}: 'ClassifyType' must be a regular expression or a list of them")
    classify = tuple(_regex(where, "ClassifyType", c) for c in classify)
    return RoutingRule(index, name, called, calling, enabled, directory.upper(), tuple(targets),
                       _flag(where, "break", spec.get("break"), False), classify,
                       _flag(where, "sendErrorAsDcm", spec.get("sendErrorAsDcm"), False))


def parse_rules(text: str, source: str = "routing.json") -> RoutingTable:
    """Parse and validate routing rules; :class:`RoutingError` names the file, rule and key."""
    try:
        data = json.loads(_strip_comments(text))
    except json.JSONDecodeError as exc:
        raise RoutingError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict):
        unknown = set(data) - {"routing"}
        if "routing" not in data or unknown:
            raise RoutingError(f"{source}: expected {{\"routing\": [rules]}}"
                               + (f", found key(s) {sorted(unknown)}" if unknown else ""))
        data = data["routing"]
    if not isinstance(data, list):
        raise RoutingError(f"{source}: 'routing' must be a list of rules")
    try:
        return RoutingTable(tuple(_rule(i, spec) for i, spec in enumerate(data)), source)
    except RoutingError as exc:
        raise RoutingError(f"{source}: {exc}") from None


def load_rules(path: str | Path) -> RoutingTable:
    """Rules from a file; a missing file is an empty table (no routing)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RoutingTable((), str(path))
    except UnicodeDecodeError as exc:
        raise RoutingError(f"{path}: not UTF-8 text ({exc})") from None
    return parse_rules(text, str(path))


# -- selecting files ---------------------------------------------------------------------------
def _tag_text(ds: Any, tag: int) -> str | None:
    element = ds.get(tag)
    if element is None:
        return None
    value = element.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return "" if value is None else str(value)


def select_files(files: Iterable[Path], which: Sequence[tuple[tuple[int, re.Pattern[str]], ...]]) -> list[Path]:
    """The files that match at least one ``which`` entry (all files when there is none).
    Files pydicom cannot read are left out of a filtered selection."""
    files = list(files)
    if not which:
        return files
    import pydicom

    tags = sorted({tag for entry in which for tag, _ in entry})
    chosen = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            if any(all((text := _tag_text(ds, tag)) is not None and pattern.fullmatch(text) for tag, pattern in entry)
                   for entry in which):
                chosen.append(path)
        except Exception:     # not DICOM, or broken in any of pydicom's ways: matches no filter
            continue
    return chosen


# -- running a plan (synchronously; the durable send jobs wrap this) ---------------------------
@dataclass
class PlanOutcome:
    """What happened to each destination of a plan, in order."""
    plan: RoutePlan
    reports: list[SendReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # destinations not tried, and why

    @property
    def delivered(self) -> bool:
        """At least one destination fired and every destination that had to succeed did:
        in a fail-over chain the chain succeeded."""
        return bool(self.reports) and not self.pending

    @property
    def pending(self) -> list[PlannedSend]:
        """Destinations whose send failed and that no later successful 'break' made moot."""
        failed: list[PlannedSend] = []
        for send, report in zip(self.plan.sends, self.reports):
            if report.ok and send.target.stop_after_success:
                return []
            if not report.ok:
                failed.append(send)
        return failed


def execute_plan(plan: RoutePlan, files: Sequence[Path],
                 send: Callable[[Sequence[Path], Destination], SendReport]) -> PlanOutcome:
    """Send ``files`` along ``plan``: each destination in order gets the files its ``which``
    selects; a successful destination with ``break`` stops the rest; a failed one falls
    through to the next."""
    outcome = PlanOutcome(plan)
    for position, planned in enumerate(plan.sends):
        chosen = select_files(files, planned.target.which)
        report = send(chosen, planned.destination)
        outcome.reports.append(report)
        if report.ok and planned.target.stop_after_success:
            outcome.skipped.extend(f"{later.destination}: not needed, {planned.destination} succeeded "
                                   f"with 'break'" for later in plan.sends[position + 1:])
            break
    return outcome
