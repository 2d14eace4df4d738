"""The committed sample reports are what the generator produces, and they are valid."""
from __future__ import annotations

from conftest import REPO
from stability_collector.metrics import summaries
from stability_collector.report import read_report
from stability_collector.samples import generate


def test_committed_samples_equal_generator_output(tmp_path):
    generated = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    committed_dir = REPO / "sample_statfiles"
    committed = {p.relative_to(committed_dir): p.read_bytes() for p in committed_dir.rglob("Stability_*.txt")}
    assert set(generated) == set(committed), "regenerate with: hops-stability samples sample_statfiles"
    assert all(generated[k] == committed[k] for k in generated)


def test_samples_parse_and_show_the_documented_features():
    base = REPO / "sample_statfiles"
    prisma = sorted((base / "prisma1").glob("*.txt"))
    vida = sorted((base / "vida2").glob("*.txt"))
    assert len(prisma) == 52 and len(vida) == 52 + 13
    assert prisma[0].name == "Stability_20250106T083741.txt"       # pre-XA30 names
    assert vida[0].name.startswith("Stability_2025-01-07T")          # XA30 names
    snr = [summaries(read_report(p))["snr_mean"] for p in prisma]
    before, after = snr[:23], snr[24:]                              # service visit 2025-06-16
    assert sum(after) / len(after) > 1.05 * sum(before) / len(before)
    assert {read_report(p).channels for p in vida} == {20, 48}
