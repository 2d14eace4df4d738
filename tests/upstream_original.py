"""The metric names the original HOPS collector gave a report, restated for the tests.

The original is ``stability_collector.py`` in github.com/fasrc/mri_stability_diamondcollector
(last change 2019-04).  This module restates its naming rules in our own words so the tests
can compare HOPS' ``upstream`` layout with them; ``tests/data/original_collector_names.json``
holds the names the original code itself published for the reference reports (see
``tests/tools/original_collector_names.py``), and a test checks that this restatement agrees.

The rules, as the original applies them to one report:

* the first line must say ``16 slices, 500 measurements, NN channels``; the coil node is
  ``{'32': '32', '48': '64', '64': '64'}[NN]`` (any other count: the file is skipped);
* each ``Stability <Section> results:`` block with its ``slice#`` header and rows 1..16 gives
  ``<location>.<coil>.<Section>.<column>.<row>``: ``<Section>`` as printed (``SI SIfit SNR ghost
  fit``), ``<column>`` the header word with ``[%]`` replaced by ``pct`` and every other non-word
  character removed (``sdpct P2Ppct p0 p1 p2``), ``<row>`` the row number without padding;
* ``<location>`` is the configured scanner location with ``/`` replaced by ``.``;
* Diamond then puts its own prefix in front of every published name:
  ``<path_prefix>.<hostname>[.<path_suffix>].StabilityCollector.<name>``.
"""
from __future__ import annotations

import re
from pathlib import Path

ORIGINAL_COIL_MAP = {"32": "32", "48": "64", "64": "64"}


def original_node(header_word: str) -> str:
    """A column header made a metric node the way the original collector does it."""
    return re.sub(r"\W+", "", header_word.replace("[%]", "pct"))


def diamond_prefix(path_prefix: str = "servers", hostname: str | None = None, path_suffix: str = "") -> str:
    """What Diamond puts in front of a name published by a collector class named
    StabilityCollector (no ``path`` option): prefix, host, suffix, class name."""
    parts = [p for p in (path_prefix, hostname, path_suffix) if p]
    return ".".join(parts + ["StabilityCollector"])


def original_collector_names(report: Path, location: str, prefix: str = "") -> dict[str, str]:
    """``{metric name: value as printed}`` for one report, or ``{}`` when the original
    collector would have skipped it.  ``location`` uses dots (``Harvard.Northwest.Bay1``);
    ``prefix`` is Diamond's part (:func:`diamond_prefix`), empty for the bare names."""
    text = Path(report).read_text()
    first, _, rest = text.partition("\n")
    m = re.fullmatch(r"Stability configuration: 16 slices, 500 measurements, (\d\d) channels", first)
    if not m or m.group(1) not in ORIGINAL_COIL_MAP:
        return {}
    coil = ORIGINAL_COIL_MAP[m.group(1)]
    base = ".".join(p for p in (prefix, location, coil) if p)
    names: dict[str, str] = {}
    block = re.compile(r"Stability (\w+) results:\n\nslice#(.*)\n" + "".join(
        rf"{n:2d}(.*)\n" for n in range(1, 17)))
    for section in block.finditer(rest):
        columns = [original_node(word) for word in section.group(2).split()]
        for row in range(16):
            for column, value in zip(columns, section.group(3 + row).split()):
                names[f"{base}.{section.group(1)}.{column}.{row + 1}"] = value
    return names
