"""Test helper: send a bucket's ``measures.json`` to carbon through the confirmed sender.

It uses the node's own measures code (:mod:`magickbox.results.measures`: validation, metric
paths, time stamps) with a permissive policy — the document's ``prefix`` is allowed and
the subject key is a fixed alias — for the tests that need bucket measures in a real
Graphite without a running node (dashboards, the QA bucket end to end).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from magickbox.results.measures import SubjectPolicy, datapoint_lines, parse_measures
from stability_collector.core.graphite import GraphiteSender


def measures_datapoints(doc: dict[str, Any] | Path, timezone: str = "UTC", bucket: str = "bucket",
                        subject: str = "unknown") -> dict[str, tuple[float, int]]:
    """metric path -> (value, epoch seconds) of a measures.json document."""
    text = Path(doc).read_text() if not isinstance(doc, dict) else json.dumps(doc)
    zone = ZoneInfo(timezone)
    measure_set = parse_measures(text, zone)
    lines = datapoint_lines(measure_set, bucket, {}, SubjectPolicy("alias", alias=subject), zone,
                            [measure_set.prefix] if measure_set.prefix else [])
    return {path: (float(value), int(t)) for path, value, t in (line.split() for line in lines)}


def send_measures(sender: GraphiteSender, doc: dict[str, Any] | Path, **kw: Any) -> dict[str, tuple[float, int]]:
    """Deliver every measure (one confirmed batch); returns what was sent."""
    points = measures_datapoints(doc, **kw)
    sender.deliver("".join(f"{path} {value!r} {t}\n" for path, (value, t) in points.items()))
    return points
