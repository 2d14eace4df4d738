"""Regenerate ``tests/data/original_collector_names.json``: run the ORIGINAL HOPS collector
(``stability_collector.py`` of github.com/fasrc/mri_stability_diamondcollector, loaded from a
checkout you give; nothing of it is copied here) under diamond-next over the reference reports
and record the metric paths and time stamps it publishes.

    TZ=UTC .venv/bin/python tests/tools/original_collector_names.py /path/to/original/stability_collector.py

Diamond settings used: ``path_prefix = servers``, ``hostname = hopsvm``; the original's
scanner location is set to ``Harvard/Northwest/Bay1`` (its ``__init__`` hard-codes a site path,
so the probe sets the same attributes for a temporary directory instead of calling it).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("HOPS_REFERENCE", REPO.parent / "shared" / "reference" / "hops"))
OUT = REPO / "tests" / "data" / "original_collector_names.json"
LOCATION = "Harvard/Northwest/Bay1"
DIAMOND_SETTINGS = {"path_prefix": "servers", "hostname": "hopsvm"}


def main(original: str) -> int:
    import diamond.collector

    spec = importlib.util.spec_from_file_location("original_stability_collector", original)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    work = Path(tempfile.mkdtemp())
    published: list[tuple[str, int]] = []

    class StabilityCollector(module.StabilityCollector):   # same class name: same Diamond path
        def __init__(self):
            diamond.collector.Collector.__init__(
                self, config={"collectors": {"collectorsDefault": DIAMOND_SETTINGS}}, handlers=[])
            self.ingest_dir, self.scanner_location, self.base_dir, self.logfiles = "Ingested", LOCATION, str(work), []

        def publish_metric(self, metric):
            published.append((metric.path, metric.timestamp))

    result = {}
    for report in sorted(REFERENCE.glob("Stability_*.txt")):
        directory = work / LOCATION
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        shutil.copy(report, directory)
        published.clear()
        StabilityCollector().collect()
        result[report.name] = {"timestamps": sorted({t for _, t in published}),
                               "paths": sorted(p for p, _ in published)}
    OUT.write_text(json.dumps({"diamond": DIAMOND_SETTINGS, "location": LOCATION, "tz": os.environ.get("TZ"),
                               "reports": result}, indent=1) + "\n")
    shutil.rmtree(work)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
