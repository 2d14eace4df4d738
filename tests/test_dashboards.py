"""Dashboards as code and the Graphite bundle, checked against a real graphite-web loaded
with the sample reports (and sample magickbox node metrics)."""
from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import random
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml
from conftest import REPO

from magickbox import node_metrics as nm
from stability_collector.core.graphite import GraphiteAddress, GraphiteSender
from stability_collector.ingest import Ingestor, IngestSettings, Outcome, ScannerSource
from stability_collector.localgraphite import LocalGraphite, whisper_value_at
from stability_collector.qa.config import build_qa_config
from stability_collector.qa.evaluate import QAEvaluator
from stability_collector.qa.events import EventStore, sync_events
from stability_collector.qa.graphiteweb import GraphiteWeb

SAMPLE_RANGE = {"from": "20250101", "until": "20260101"}
NODE = "node1"


def load_generator():
    spec = importlib.util.spec_from_file_location("hops_dashboards", REPO / "grafana-dashboards" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: fBIRN sample scans (ProcQA bucket) for the sample scanners: (station, coil tag, coil alias)
FBIRN_SCANNERS = [("prisma1", "Head_32", "32ch"), ("vida2", "HeadNeck_20", "20ch"), ("vida2", "HeadNeck_64", "48ch")]
#: more scans than hops-qa's baseline (10 in load_qa_results) in every baseline phase, so the
#: control rules and levels run on them too: monthly, and every two weeks on prisma1, whose
#: service event (2025-06-16) starts a second phase
FBIRN_DATES = {"prisma1": [(_dt.date(2025, 1, 6) + _dt.timedelta(days=14 * n)).isoformat() + "T07:30:00"
                           for n in range(26)],
               "vida2": [f"2025-{month:02d}-06T07:30:00" for month in range(1, 13)]}


def load_fbirn_samples(base, sender) -> list[str]:
    """Synthetic phantom scans through the real bucket code (loader, analysis,
    measures.json) and the node's measures code (the shipped bucket's settings, the
    study's header, confirmed delivery); returns metrics to wait for.  (A running node
    delivering them is tested in test_qa_bucket.py.)"""
    from magickbox.qa.bucket import run
    from magickbox.qa.cli import BUCKET_DIR
    from magickbox.qa.measures import load_config
    from magickbox.qa.phantom import PhantomSpec, generate, write_series
    from magickbox.results.measure_stage import (
        measure_points,
        parse_bucket_measures,
        parse_measures_config,
        read_measures_file,
    )
    config = load_config({"coil_aliases": {coil: alias for _, coil, alias in FBIRN_SCANNERS}})
    bucket_measures = parse_bucket_measures(json.loads((BUCKET_DIR / "info.json").read_text())["measures"])
    node_measures = parse_measures_config({"timezone": "UTC"})
    waits = []
    rng = random.Random(15)       # in control: about 1 % scan-to-scan variation of the noise
    for i, (station, coil, alias) in enumerate(FBIRN_SCANNERS):
        for j, start in enumerate(FBIRN_DATES[station]):
            spec = PhantomSpec(slices=7, volumes=34, station_name=station, coil=coil, start=start, seed=10 * i + j,
                               noise=5.0 * (1 + 0.01 * rng.gauss(0, 1)), ghost=2.0 + i)
            series = base / f"fbirn-{station}-{alias}-{j}"
            files = write_series(generate(spec), series / "in", "enhanced")
            (series / "out").mkdir()
            status, message = run(series / "in", series / "out", None, config, report=False)
            assert status == "success", message
            text = read_measures_file(series / "out" / "measures.json", "measures.json")
            points = measure_points(text, "measures.json", "ProcQA", bucket_measures, node_measures, files[:1])
            sender.deliver("".join(p.line for p in points))
            waits.extend(p.path for p in points)
    return sorted(set(waits))


@pytest.fixture(scope="module")
def loaded_graphite(tmp_path_factory):
    """graphite-web with all sample reports, fBIRN sample scans and 6 hours of magickbox
    node metrics."""
    base = tmp_path_factory.mktemp("dash")
    with LocalGraphite(base / "graphite", web=True) as g:
        shutil.copytree(REPO / "sample_statfiles", base / "scanners")
        sources = [ScannerSource(p.name, p, "UTC") for p in sorted((base / "scanners").iterdir())]
        sender = GraphiteSender(GraphiteAddress.parse(g.line_address))
        summary = Ingestor(sources, IngestSettings(settle_seconds=0), sender).run_pass()
        assert summary.count(Outcome.DELIVERED) == 117
        rng = random.Random(5)
        now = int(time.time()) // 60 * 60
        lines = []
        for t in range(now - 6 * 3600, now, 60):
            for name in nm.COUNTERS:
                lines.append(f"{nm.node_metric(NODE, name)} {rng.randint(0, 30)} {t}")
            for name in nm.GAUGES:
                lines.append(f"{nm.node_metric(NODE, name)} {rng.uniform(0, 5):.3f} {t}")
        sender.deliver("\n".join(lines) + "\n")
        fbirn = load_fbirn_samples(base, sender)
        g.wait_for_whisper(["hops.stability.prisma1.32ch.summary.snr_mean", "hops.stability.vida2.48ch.fit.p1.16",
                            nm.node_metric(NODE, nm.START_LATENCY)] + fbirn)
        time.sleep(1)
        load_qa_results(g, base / "qa")
        yield g


def load_qa_results(g: LocalGraphite, state) -> None:
    """Run hops-qa over the samples (a 10-scan baseline, so vida2's 13 scans of the 48ch coil get
    limits too) with a service event on prisma1, as a site would."""
    config = build_qa_config({"graphite": g.line_address, "graphite_web": g.web_url, "state_dir": str(state),
                              "baseline_scans": 10})
    store = EventStore(config.state_dir)
    store.add("prisma1", "RF amplifier replaced", 1750032000)        # 2025-06-16 00:00 UTC
    web = GraphiteWeb(g.web_url)
    assert sync_events(store, web) == (1, [])
    result = QAEvaluator(config, web, GraphiteSender(GraphiteAddress.parse(g.line_address)), store).run_pass()
    assert result.ok, result.errors
    summary = [e for e in result.evaluations if not e.key.metric.startswith("fbirn.")]
    fbirn = [e for e in result.evaluations if e.key.metric.startswith("fbirn.")]
    # 3 scanner/coil pairs x 4 summary metrics; the ProcQA bucket's fBIRN series are evaluated too
    assert len(summary) == 12 and fbirn, [e.key for e in result.evaluations]
    g.wait_for_whisper([f"hops.qa.{s}.{c}.{m}.{f}" for s, c in (("prisma1", "32ch"), ("vida2", "20ch"),
                                                                 ("vida2", "48ch"))
                        for m in ("snr_mean", "fluctuation_pct", "drift_pct", "ghost_mean")
                        for f in ("value", "status", "ucl", "ewma", "rule_we1")]
                       + ["hops.qa.prisma1.days_since_scan", "hops.qa.vida2.scan_overdue"])


def find(g: LocalGraphite, query: str) -> list[str]:
    url = f"{g.web_url}/metrics/find?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=60) as resp:
        return sorted({n["text"] for n in json.load(resp)})


def render(g: LocalGraphite, target: str, rng: dict) -> list[dict]:
    query = urllib.parse.urlencode({"target": target, "format": "json", **rng})
    try:
        with urllib.request.urlopen(f"{g.web_url}/render?{query}", timeout=120) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"graphite-web refused {target}: {exc} {exc.read()[:500]!r}") from None


def has_data(series: list[dict]) -> bool:
    return any(v is not None for s in series for v, _ in s["datapoints"])


def substitute(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(f"${name}", values[name])
    return text


def variable_choices(g: LocalGraphite, dashboard: dict) -> list[dict[str, str]]:
    """Every combination a user can pick: each single value of every variable, and 'All'
    for multi-value variables (Grafana's allValue, or a {a,b} glob)."""
    combos: list[dict[str, str]] = [{}]
    for var in dashboard["templating"]["list"]:
        new = []
        for chosen in combos:
            if var["type"] == "custom":
                values = [o["value"] for o in var["options"]]
            else:
                values = find(g, substitute(var["query"], chosen))
            assert values, f"variable ${var['name']} ({var['query']}) has no values"
            options = list(values)
            if var.get("includeAll"):
                options.append(var.get("allValue") or "{" + ",".join(values) + "}")
            new += [{**chosen, var["name"]: v, f"_all_{var['name']}": str(v == options[-1] and var.get("includeAll"))}
                    for v in options]
        combos = new
    return combos


def _levels_target_without_levels(g: LocalGraphite, target: str) -> bool:
    """A QA level query for a series that has no tolerance/action levels (the fBIRN mean
    signal, which is scanner-specific; or a series whose baseline is still provisional, like
    prisma1's fBIRN scans split by its service event): an empty panel is the right answer.
    Whether hops-qa writes levels where it should is tested in test_qa_graphite.py."""
    import re
    m = re.search(r"(hops\.qa\.[^.]+\.[^.]+\.[^.]+)\.\{tolerance_low", target)
    return bool(m) and not find(g, f"{m.group(1)}.tolerance_*")


@pytest.mark.parametrize("name", ["phantom-stability-overview.json", "scanner-compare.json", "dicom-node.json",
                                  "phantom-qa.json"])
def test_every_panel_target_returns_data(loaded_graphite, name):
    dashboard = json.loads((REPO / "grafana-dashboards" / name).read_text())
    rng = {"from": "-6h", "until": "now"} if name == "dicom-node.json" else SAMPLE_RANGE
    combos = variable_choices(loaded_graphite, dashboard)
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    assert panels
    checked = 0
    for panel in panels:
        for target in (t["target"] for t in panel["targets"]):
            results = {}
            for combo in combos:
                expanded = substitute(target, {k: v for k, v in combo.items() if not k.startswith("_")})
                if expanded not in results:
                    results[expanded] = has_data(render(loaded_graphite, expanded, rng))
            # with every multi-value variable at 'All', each single-value choice must show data
            for combo in combos:
                all_multi = all(combo[k] == "True" for k in combo if k.startswith("_all_")
                                and _is_multi(dashboard, k[5:]))
                expanded = substitute(target, {k: v for k, v in combo.items() if not k.startswith("_")})
                if all_multi and not _levels_target_without_levels(loaded_graphite, expanded):
                    assert results[expanded], f"{name} / {panel['title']}: no data for {expanded}"
            # every target shows data for at least one choice of each value
            assert any(results.values()), f"{name} / {panel['title']}: {target} matches nothing"
            checked += 1
    assert checked >= len(panels)


@pytest.mark.parametrize("name", ["phantom-stability-overview.json", "phantom-qa.json"])
def test_annotation_queries_return_events(loaded_graphite, name):
    """Service events (graphite-web events by tag) and action-level scans (a metric query) as
    Grafana would ask for them, for every scanner; a scanner without events shows none."""
    dashboard = json.loads((REPO / "grafana-dashboards" / name).read_text())
    annotations = dashboard["annotations"]["list"]
    assert annotations and all(a["datasource"]["uid"] == "hops-graphite" for a in annotations)
    for combo in variable_choices(loaded_graphite, dashboard):
        values = {k: v for k, v in combo.items() if not k.startswith("_")}
        for annotation in annotations:
            if "tags" in annotation:
                query = urllib.parse.urlencode({"from": "20250101", "until": "20260101",
                                                "tags": substitute(annotation["tags"], values)})
                with urllib.request.urlopen(f"{loaded_graphite.web_url}/events/get_data?{query}", timeout=60) as resp:
                    events = json.load(resp)
                if values["scanner"] == "prisma1":
                    assert [e["what"] for e in events] == ["prisma1: RF amplifier replaced"], events
                else:
                    assert events == [], events
            else:
                target = substitute(annotation["target"], values)
                found = has_data(render(loaded_graphite, target, SAMPLE_RANGE))
                # the ghosting episode puts vida2's ghost level at action on both coils
                assert found == (values["scanner"] == "vida2"), target


def _is_multi(dashboard: dict, var: str) -> bool:
    return any(v["name"] == var and v.get("multi") for v in dashboard["templating"]["list"])


def test_committed_json_equals_generated_source():
    proc = subprocess.run([sys.executable, str(REPO / "grafana-dashboards" / "generate.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, "regenerate with python grafana-dashboards/generate.py\n" + proc.stdout[-3000:]
    generator = load_generator()
    assert sorted(generator.DASHBOARDS) == sorted(p.name for p in (REPO / "grafana-dashboards").glob("*.json"))
    for name in generator.DASHBOARDS:
        doc = json.loads((REPO / "grafana-dashboards" / name).read_text())
        assert doc["uid"].startswith("hops-")
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "hops-graphite"


def test_stability_panel_renders_as_png(loaded_graphite, tmp_path):
    query = urllib.parse.urlencode({"target": "aliasByNode(hops.stability.*.*.summary.snr_mean, 2, 3)",
                                    "format": "png", "width": 900, "height": 360,
                                    "title": "Phantom SNR (mean over slices)", **SAMPLE_RANGE})
    with urllib.request.urlopen(f"{loaded_graphite.web_url}/render?{query}", timeout=120) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        data = resp.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 360)
    assert len(data) > 15_000          # a real plot, not an empty frame
    (tmp_path / "snr.png").write_bytes(data)


def test_alert_rule_queries_work_and_missing_scan_fires(loaded_graphite):
    rules = yaml.safe_load((REPO / "deploy/grafana/provisioning/alerting/hops-alerts.yaml").read_text())
    group = rules["groups"][0]
    by_uid = {r["uid"]: r for r in group["rules"]}
    assert {"hops-weekly-scan-missing", "hops-snr-drop", "hops-fluctuation-high"} <= set(by_uid)
    assert by_uid["hops-weekly-scan-missing"]["noDataState"] == "Alerting"
    for rule in group["rules"]:
        query = rule["data"][0]
        assert query["datasourceUid"] == "hops-graphite"
        assert has_data(render(loaded_graphite, query["model"]["target"], SAMPLE_RANGE)), rule["uid"]
    missing = by_uid["hops-weekly-scan-missing"]["data"][0]["model"]["target"]
    # in the last week of 2025 every scanner scanned; in March 2026 (after the samples) none did
    recent = render(loaded_graphite, missing, {"from": "20251224", "until": "20260101"})
    assert sorted(s["target"] for s in recent) == ["prisma1", "vida2"]
    assert all(max(v for v, _ in s["datapoints"] if v is not None) >= 1 for s in recent)
    later = render(loaded_graphite, missing, {"from": "20260301", "until": "20260309"})
    assert later and all(max(v for v, _ in s["datapoints"]) == 0 for s in later)


def test_retention_keeps_2015_and_two_scans_three_hours_apart(loaded_graphite):
    import whisper
    sender = GraphiteSender(GraphiteAddress.parse(loaded_graphite.line_address))
    metric = "hops.stability.retention.32ch.summary.snr_mean"
    points = {1433152800: 301.25,      # 2015-06-01 10:00 UTC
              1741000000: 310.5,       # 2025-03-03 11:06:40 UTC
              1741010800: 312.75}      # three hours later, same day
    sender.deliver("".join(f"{metric} {v} {t}\n" for t, v in points.items()))
    loaded_graphite.wait_for_whisper([metric])
    path = loaded_graphite.whisper_path(metric)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(whisper_value_at(path, t) != v for t, v in points.items()):
        time.sleep(0.2)
    assert {t: whisper_value_at(path, t) for t in points} == points
    info = whisper.info(str(path))
    assert info["xFilesFactor"] == 0
    assert [(a["secondsPerPoint"], a["retention"]) for a in info["archives"]] == [(3600, 30 * 365 * 86400)]
    # node metrics get their own, finer schema
    node = whisper.info(str(loaded_graphite.whisper_path(nm.node_metric(NODE, nm.QUEUE_LENGTH))))
    assert node["archives"][0]["secondsPerPoint"] == 10


def test_shipped_graphite_configs_are_what_local_runs_use():
    for name in ("carbon.conf", "storage-schemas.conf", "storage-aggregation.conf"):
        shipped = REPO / "deploy" / "graphite" / name
        assert shipped.read_text() == (REPO / "stability_collector" / "data" / "graphite" / name).read_text()
    carbon = (REPO / "deploy" / "graphite" / "carbon.conf").read_text()
    assert "MAX_CREATES_PER_MINUTE = inf" in carbon
