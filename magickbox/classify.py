"""Series classification with MagickBox's ``classifyRules.json``.

The file is a list of *types*::

    [{"type": "T1", "id": "T1GE", "description": "...", "check": "SeriesLevel"?,
      "rules": [ {"tag": ["0x08", "0x70"], "value": "^GE MEDICAL", "operator": "regexp"},
                 {"rule": "GEBYMANUFACTURER"},
                 {"tag": ["NumFiles"], "operator": ">", "value": "100", "negate": "yes"} ]}]

* all rules of a type must hold (AND); ``{"rule": id}`` includes the rules of the type
  with that ``id`` (references nest; cycles and unknown ids are errors);
* ``tag``: ``[key]`` reads the series record (``NumFiles``, ``ClassifyType``,
  ``SeriesDescription``...), ``[group, element]`` the DICOM instance,
  ``[group, element, index]`` one value of a multi-valued element (hex strings like
  ``"0x0019"`` or integers);
* ``operator``: ``regexp`` (default; Python ``re.search`` on the value as text, multiple
  values joined with ``\\``), ``==``, ``!=``, ``<``, ``>`` (numeric; ``==``/``!=`` fall back
  to text when a side is not a number), ``exist``, ``notexist``, ``contains`` (the rule's
  value is one of the tag's values), ``approx`` (every number within ``approxLevel``,
  default 0.0001, of the rule's list);
* ``"negate": "yes"`` inverts one rule;
* types are evaluated for every arriving instance and accumulate in the series'
  ``ClassifyType``; a type with ``"check": "SeriesLevel"`` is instead re-evaluated against
  the series record after every instance and added or removed (e.g. *oblique* = not
  axial, coronal or sagittal).

A malformed file is a :class:`RulesError` at start-up that names the type and rule.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["RulesError", "ClassifyRules", "TagRef", "DEFAULT_APPROX_LEVEL"]

DEFAULT_APPROX_LEVEL = 0.0001
OPERATORS = ("regexp", "==", "!=", "<", ">", "exist", "notexist", "contains", "approx")
_TRUE = {"yes", "true", "1", "y", "t"}


class RulesError(ValueError):
    """classifyRules.json is malformed; the message names the type and the rule."""


@dataclass(frozen=True)
class TagRef:
    """``key`` for a series-record key, else (group, element[, index]) of the instance."""

    key: str | None = None
    group: int = 0
    element: int = 0
    index: int | None = None

    @property
    def is_dicom(self) -> bool:
        return self.key is None


@dataclass(frozen=True)
class _Condition:
    tag: TagRef
    operator: str
    value: Any
    approx_level: float
    negate: bool
    pattern: re.Pattern[str] | None


@dataclass(frozen=True)
class _Reference:
    rule_id: str
    negate: bool


@dataclass(frozen=True)
class _Type:
    name: str
    id: str | None
    series_level: bool
    rules: tuple[_Condition | _Reference, ...]


def _is_true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return str(value).strip().lower() in _TRUE


def _parse_number(token: Any, where: str, what: str) -> int:
    if isinstance(token, bool):
        raise RulesError(f"{where}: {what} must be a hex string or integer, found {token!r}")
    if isinstance(token, int):
        value = token
    elif isinstance(token, str):
        text = token.strip().lower()
        try:
            value = int(text, 16)
        except ValueError:
            raise RulesError(f"{where}: {what} {token!r} is not a hex number") from None
    else:
        raise RulesError(f"{where}: {what} must be a hex string or integer, found {token!r}")
    if not 0 <= value <= 0xFFFF:
        raise RulesError(f"{where}: {what} {token!r} is out of range")
    return value


def _parse_tag(tag: Any, where: str) -> TagRef:
    if not isinstance(tag, list) or not 1 <= len(tag) <= 3:
        raise RulesError(f"{where}: 'tag' must be [key], [group, element] or [group, element, index], found {tag!r}")
    if len(tag) == 1:
        if not isinstance(tag[0], str) or not tag[0].strip():
            raise RulesError(f"{where}: 'tag' [key] needs a series record key, found {tag!r}")
        return TagRef(key=tag[0].strip())
    group = _parse_number(tag[0], where, "tag group")
    element = _parse_number(tag[1], where, "tag element")
    index = None
    if len(tag) == 3:
        try:
            index = int(str(tag[2]), 10)
        except ValueError:
            raise RulesError(f"{where}: tag index {tag[2]!r} is not an integer") from None
        if index < 0:
            raise RulesError(f"{where}: tag index {tag[2]!r} is negative")
    return TagRef(group=group, element=element, index=index)


def _parse_condition(rule: Mapping[str, Any], where: str) -> _Condition | _Reference:
    if not isinstance(rule, Mapping):
        raise RulesError(f"{where}: expected an object, found {rule!r}")
    negate = _is_true(rule.get("negate", False))
    if "rule" in rule:
        if not isinstance(rule["rule"], str) or not rule["rule"]:
            raise RulesError(f"{where}: 'rule' must name the id of another type")
        return _Reference(rule["rule"], negate)
    if "tag" not in rule:
        raise RulesError(f"{where}: needs 'tag' and 'value' (or 'rule' referencing another type's id)")
    tag = _parse_tag(rule["tag"], where)
    operator = str(rule.get("operator", "regexp")).strip()
    if operator not in OPERATORS:
        raise RulesError(f"{where}: unknown operator {operator!r} (known: {', '.join(OPERATORS)})")
    value = rule.get("value")
    if value is None and operator not in ("exist", "notexist"):
        raise RulesError(f"{where}: operator {operator!r} needs a 'value'")
    pattern = None
    if operator == "regexp":
        try:
            pattern = re.compile(str(value))
        except re.error as exc:
            raise RulesError(f"{where}: bad regular expression {value!r}: {exc}") from None
    elif operator in ("==", "!=", "<", ">"):
        if operator in ("<", ">") and _to_float(value) is None:
            raise RulesError(f"{where}: operator {operator!r} needs a numeric value, found {value!r}")
    elif operator == "approx":
        values = value if isinstance(value, list) else [value]
        if not values or any(_to_float(v) is None for v in values):
            raise RulesError(f"{where}: operator 'approx' needs a number or a list of numbers, found {value!r}")
    level = rule.get("approxLevel", DEFAULT_APPROX_LEVEL)
    approx_level = _to_float(level)
    if approx_level is None or approx_level < 0:
        raise RulesError(f"{where}: 'approxLevel' must be a non-negative number, found {level!r}")
    return _Condition(tag, operator, value, approx_level, negate, pattern)


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _values(value: Any) -> list[Any]:
    """A tag value as a list (multi-valued elements, JSON lists) or a one-element list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, bytes):   # an element of unknown VR (e.g. private, implicit VR)
        text = value.decode("latin-1").strip("\x00 ")
        return text.split("\\") if "\\" in text else [text]
    if isinstance(value, str):
        return [value]
    try:
        return list(value)  # pydicom MultiValue
    except TypeError:
        return [value]


def _text(value: Any) -> str:
    items = _values(value)
    return "\\".join(str(v) for v in items)


_MISSING = object()


class ClassifyRules:
    """Parsed classification rules.  ``evaluate`` is called for every instance."""

    def __init__(self, types: Sequence[_Type], source: str = "classifyRules.json"):
        self.types = tuple(types)
        self.source = source
        self._by_id = {t.id: t for t in self.types if t.id}

    # -- loading ---------------------------------------------------------------
    @classmethod
    def empty(cls) -> "ClassifyRules":
        return cls([], "(no rules)")

    @classmethod
    def load(cls, path: str | Path) -> "ClassifyRules":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise RulesError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise RulesError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, source: str = "classifyRules.json") -> "ClassifyRules":
        if not isinstance(data, list):
            raise RulesError(f"{source}: expected a list of types, found {type(data).__name__}")
        types = []
        ids: dict[str, str] = {}
        for n, entry in enumerate(data, 1):
            label = f"{source}: type {n}"
            if not isinstance(entry, Mapping):
                raise RulesError(f"{label}: expected an object, found {entry!r}")
            name = entry.get("type")
            if not isinstance(name, str) or not name.strip():
                raise RulesError(f"{label}: missing 'type' name")
            label += f" ({name!r})"
            type_id = entry.get("id")
            if type_id is not None:
                if not isinstance(type_id, str) or not type_id:
                    raise RulesError(f"{label}: 'id' must be a non-empty string")
                if type_id in ids:
                    raise RulesError(f"{label}: duplicate id {type_id!r} (also {ids[type_id]})")
                ids[type_id] = label
            check = entry.get("check")
            if check not in (None, "", "SeriesLevel"):
                raise RulesError(f"{label}: 'check' must be \"SeriesLevel\", found {check!r}")
            rules = entry.get("rules")
            if not isinstance(rules, list) or not rules:
                raise RulesError(f"{label}: 'rules' must be a non-empty list")
            parsed = tuple(_parse_condition(rule, f"{label}, rule {i}") for i, rule in enumerate(rules, 1))
            types.append(_Type(name.strip(), type_id, check == "SeriesLevel", parsed))
        result = cls(types, source)
        result._check_references()
        return result

    def _check_references(self) -> None:
        def visit(t: _Type, stack: tuple[str, ...]) -> None:
            for i, rule in enumerate(t.rules, 1):
                if isinstance(rule, _Reference):
                    target = self._by_id.get(rule.rule_id)
                    where = f"{self.source}: type {t.name!r}, rule {i}"
                    if target is None:
                        raise RulesError(f"{where}: references unknown rule id {rule.rule_id!r}")
                    if rule.rule_id in stack:
                        raise RulesError(f"{where}: reference cycle {' -> '.join(stack + (rule.rule_id,))}")
                    visit(target, stack + (rule.rule_id,))
        for t in self.types:
            visit(t, (t.id,) if t.id else ())

    # -- what to read ------------------------------------------------------------
    def dicom_tags(self) -> set[tuple[int, int]]:
        """(group, element) of every instance tag the rules read."""
        tags = set()
        for t in self.types:
            for rule in t.rules:
                if isinstance(rule, _Condition) and rule.tag.is_dicom:
                    tags.add((rule.tag.group, rule.tag.element))
        return tags

    # -- evaluation --------------------------------------------------------------
    def _lookup(self, tag: TagRef, record: Mapping[str, Any], instance: Callable[[int, int], Any]) -> Any:
        if not tag.is_dicom:
            return record.get(tag.key, _MISSING)  # type: ignore[arg-type]
        value = instance(tag.group, tag.element)
        if value is _MISSING or tag.index is None:
            return value
        items = _values(value)
        return items[tag.index] if tag.index < len(items) else _MISSING

    def _holds(self, cond: _Condition, value: Any) -> bool:
        op = cond.operator
        if op == "exist":
            result = value is not _MISSING
        elif op == "notexist":
            result = value is _MISSING
        elif value is _MISSING:
            result = False
        elif op == "regexp":
            result = cond.pattern.search(_text(value)) is not None  # type: ignore[union-attr]
        elif op in ("==", "!="):
            a, b = _to_float(_text(value)), _to_float(cond.value)
            equal = (a == b) if a is not None and b is not None else _text(value).strip() == str(cond.value).strip()
            result = equal if op == "==" else not equal
        elif op in ("<", ">"):
            a, b = _to_float(_text(value)), _to_float(cond.value)
            result = a is not None and b is not None and (a < b if op == "<" else a > b)
        elif op == "contains":
            wanted = str(cond.value)
            items = _values(value)
            result = any(str(v) == wanted for v in items) or (
                isinstance(value, str) and wanted in value)
        else:  # approx
            target = cond.value if isinstance(cond.value, list) else [cond.value]
            actual = [_to_float(v) for v in _values(value)]
            result = len(actual) == len(target) and all(
                a is not None and abs(a - float(b)) <= cond.approx_level for a, b in zip(actual, target))
        return result != cond.negate

    def _type_holds(self, t: _Type, record: Mapping[str, Any], instance: Callable[[int, int], Any]) -> bool:
        for rule in t.rules:
            if isinstance(rule, _Reference):
                ok = self._type_holds(self._by_id[rule.rule_id], record, instance)
                if ok == rule.negate:
                    return False
            elif not self._holds(rule, self._lookup(rule.tag, record, instance)):
                return False
        return True

    def evaluate(self, record: Mapping[str, Any], instance: Callable[[int, int], Any] | None = None) -> list[str]:
        """The new ``ClassifyType`` list for a series after one more instance.

        ``record`` is the series record (with the current ``ClassifyType``);
        ``instance(group, element)`` returns the instance's value of a tag or
        :data:`MISSING`.  Instance types accumulate; SeriesLevel types are recomputed.
        """
        lookup = instance or (lambda g, e: _MISSING)
        current = [c for c in _values(record.get("ClassifyType")) if isinstance(c, str)]
        series_level_names = {t.name for t in self.types if t.series_level}
        kept = [c for c in current if c not in series_level_names]
        for t in self.types:
            if not t.series_level and t.name not in kept and self._type_holds(t, record, lookup):
                kept.append(t.name)
        updated = dict(record)
        updated["ClassifyType"] = list(kept)
        for t in self.types:
            if t.series_level and t.name not in kept and self._type_holds(t, updated, lookup):
                kept.append(t.name)
                updated["ClassifyType"] = list(kept)
        return kept


MISSING = _MISSING


def instance_lookup(dataset: Any) -> Callable[[int, int], Any]:
    """Adapter: a pydicom Dataset as the ``instance`` callable of :meth:`ClassifyRules.evaluate`."""
    def lookup(group: int, element: int) -> Any:
        elem = dataset.get((group, element))
        if elem is None:
            return _MISSING
        value = elem.value
        return "" if value is None else value
    return lookup


def tag_list(tags: Iterable[tuple[int, int]]) -> list[str]:
    return [f"({g:04X},{e:04X})" for g, e in sorted(tags)]
