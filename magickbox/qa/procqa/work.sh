#!/bin/sh
# HOPS ProcQA bucket: fBIRN stability metrics of a phantom fMRI series.
# Called by the node's process runner as: work.sh INPUT OUTPUT MEMORY (from this directory).
# The Python that has HOPS installed: $HOPS_PYTHON, else the one recorded in python.path by
# "magickbox qa install", else the python beside the magickbox on PATH, else the first
# python3/python on PATH that can import magickbox.qa.
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${HOPS_PYTHON:-}
if [ -z "$PY" ] && [ -r "$HERE/python.path" ]; then
  PY=$(cat "$HERE/python.path")
fi
if [ -z "$PY" ] && command -v magickbox >/dev/null 2>&1; then
  # the Python of the magickbox on PATH (a virtual environment's bin/)
  candidate=$(dirname "$(command -v magickbox)")/python
  if [ -x "$candidate" ] && "$candidate" -c 'import magickbox.qa.bucket' 2>/dev/null; then
    PY=$candidate
  fi
fi
if [ -z "$PY" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import magickbox.qa.bucket' 2>/dev/null; then
      PY=$candidate
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "ProcQA: no Python with HOPS (magickbox.qa) found; set HOPS_PYTHON or install with 'magickbox qa install'"
  if [ -n "${2:-}" ]; then
    echo '[{"success": "failed", "message": "no Python with HOPS (magickbox.qa): set HOPS_PYTHON or run magickbox qa install"}]' > "$2/proc.json"
  fi
  exit 1
fi
exec "$PY" -m magickbox.qa.bucket "$@"
