"""Test helper: send a bucket's ``measures.json`` to carbon through the confirmed sender.

This stands in for the node-side delivery (issue 13) in the tests that need bucket
measures in a real Graphite (dashboards, the QA bucket end to end): it follows the
README's measures.json rules — ``<prefix>.<name>``, or ``hops.measures.<bucket>.<subject>
.<name>`` without a prefix; the document's (or the measure's own) ``time``, a naive time
read in ``timezone`` — and delivers with :class:`stability_collector.delivery.GraphiteSender`.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from stability_collector.delivery import GraphiteSender

NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def measures_datapoints(doc: dict[str, Any] | Path, timezone: str = "UTC", bucket: str = "bucket",
                        subject: str = "unknown") -> dict[str, tuple[float, int]]:
    """metric path -> (value, epoch seconds) of a measures.json document."""
    if not isinstance(doc, dict):
        doc = json.loads(Path(doc).read_text())
    assert doc.get("version") == 1, doc.get("version")
    prefix = doc.get("prefix") or f"hops.measures.{bucket}.{subject}"
    assert NAME.fullmatch(prefix), prefix
    zone = ZoneInfo(timezone)

    def epoch(text: str) -> int:
        when = _dt.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone)
        return int(when.timestamp())

    out: dict[str, tuple[float, int]] = {}
    for m in doc["measures"]:
        assert NAME.fullmatch(m["name"]), m["name"]
        out[f"{prefix}.{m['name']}"] = (float(m["value"]), epoch(m.get("time") or doc["time"]))
    return out


def send_measures(sender: GraphiteSender, doc: dict[str, Any] | Path, **kw: Any) -> dict[str, tuple[float, int]]:
    """Deliver every measure (one confirmed batch); returns what was sent."""
    points = measures_datapoints(doc, **kw)
    sender.deliver("".join(f"{path} {value!r} {t}\n" for path, (value, t) in points.items()))
    return points
