"""``pip install .`` (setup.py) ships the code, the data files and both console scripts."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_packages_data_and_console_scripts(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hops_mri-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for required in ("stability_collector/report.py", "stability_collector/data/graphite/storage-schemas.conf",
                     "stability_collector/data/graphite/storage-aggregation.conf", "magickbox/cli.py",
                     "magickbox/qa/fbirn.py", "magickbox/qa/procqa/info.json", "magickbox/qa/procqa/work.sh",
                     "magickbox/qa/procqa/Dockerfile"):
        assert required in names
    with zipfile.ZipFile(wheel) as zf:          # the shipped bucket's entry point stays executable
        assert (zf.getinfo("magickbox/qa/procqa/work.sh").external_attr >> 16) & 0o111
    assert "hops-stability = stability_collector.cli:main" in entry_points
    assert "magickbox = magickbox.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)
