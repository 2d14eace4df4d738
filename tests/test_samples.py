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


def test_samples_refuse_to_write_reports_dated_in_the_future(tmp_path):
    """`samples --weeks 223` would reach 2029; carbon discards future points, so nothing is written."""
    import datetime as dt
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("hops-stability", path=os.path.dirname(sys.executable))
    out = tmp_path / "out"
    proc = subprocess.run([exe, "samples", str(out), "--weeks", "223"], capture_output=True, text=True)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "weeks: 223 weeks from 2025-01-06 would write reports up to 2029-" in proc.stderr
    assert "carbon discards datapoints from the future" in proc.stderr
    assert not list(out.rglob("Stability_*.txt")) if out.exists() else True
    fits = int(proc.stderr.split("At most ")[1].split()[0])
    files = generate(tmp_path / "fits", weeks=fits)
    latest = max(read_report(p).scan_time for p in files)
    assert latest <= dt.datetime.now() and fits >= 52
