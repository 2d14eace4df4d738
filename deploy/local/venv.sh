#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with HOPS installed
# editable.  Usage: deploy/local/venv.sh [EXTRAS]   e.g. deploy/local/venv.sh test
# Works on a machine that never saw the project (no pip cache): with the 'test' extra it
# first builds diamond-next the only way that works from scratch (install-diamond.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel
spec="."
if [ -n "${1:-}" ]; then
  spec=".[$1]"
  case ",$1," in
    *,test,*|*,diamond,*) deploy/diamond/install-diamond.sh .venv/bin/python ;;
  esac
fi
.venv/bin/python -m pip install -q -e "$spec"
