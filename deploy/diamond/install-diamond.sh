#!/usr/bin/env bash
# Install diamond-next 5.0.0 into a Python environment, from scratch (no wheel cache needed).
#   deploy/diamond/install-diamond.sh [PYTHON]      default: python3 (use your venv's python)
# diamond-next publishes only an sdist whose setup.py imports 'distro' (and, at run time,
# 'pkg_resources' from setuptools < 81).  pip's isolated build environment has neither, so
# a plain 'pip install diamond-next' fails on a fresh machine.  Build requirements first,
# then build without isolation.
set -euo pipefail
PY=${1:-python3}
"$PY" -m pip install -q distro wheel configobj 'setuptools<81'
"$PY" -m pip install -q --no-build-isolation diamond-next==5.0.0
