"""``pip install .`` (setup.py) ships the code, the data files and both console scripts."""
from __future__ import annotations

import os
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
                     "magickbox/qa/procqa/Dockerfile",
                     "magickbox/api/templates/job.html", "magickbox/api/static/app.js", "magickbox/api/static/app.css",
                     "magickbox/client/cli.py"):
        assert required in names
    with zipfile.ZipFile(wheel) as zf:          # the shipped bucket's entry point stays executable
        assert (zf.getinfo("magickbox/qa/procqa/work.sh").external_attr >> 16) & 0o111
    assert "hops-stability = stability_collector.cli:main" in entry_points
    assert "magickbox = magickbox.cli:main" in entry_points
    assert "hops-qa = stability_collector.qa.cli:main" in entry_points
    assert "stability_collector/qa/evaluate.py" in names
    assert "mb = magickbox.client.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)


def test_readme_install_paths_work_in_a_clean_environment(tmp_path):
    """The README's user-facing install paths, as written, in a venv that shares nothing with
    ours and with pip's cache off: ``pip install .`` gives both console scripts; the Diamond
    steps (install-diamond.sh, then ``pip install '.[diamond]'``) give a Diamond that can load
    the collector shim."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    env.pop("PYTHONPATH", None)

    def run(*cmd, cwd=None):
        proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run(py, "-m", "pip", "install", "-q", str(REPO))
    assert "usage: hops-stability" in run(str(venv / "bin" / "hops-stability"), "--help")
    assert "usage: magickbox" in run(str(venv / "bin" / "magickbox"), "--help")
    assert "usage: mb" in run(str(venv / "bin" / "mb"), "--help")
    # the installed package, not the clone, is what gets imported
    where = run(py, "-c", "import stability_collector, magickbox; print(stability_collector.__file__)",
                cwd=str(tmp_path))
    assert str(venv) in where

    run(str(REPO / "deploy" / "diamond" / "install-diamond.sh"), py)
    run(py, "-m", "pip", "install", "-q", f"{REPO}[diamond]")
    shim_dir = REPO / "deploy" / "diamond" / "collectors"
    out = run(py, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import diamond.collector, hops_stability; "
              "print(hops_stability.StabilityCollector.__mro__[1].__module__)", str(shim_dir), cwd=str(tmp_path))
    assert "diamond.collector" in out
