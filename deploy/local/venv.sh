#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with HOPS installed
# editable.  Usage: deploy/local/venv.sh [EXTRAS]   e.g. deploy/local/venv.sh test
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install -q -e "$spec"
