#!/usr/bin/env bash
# Set up everything and run the HOPS full tour (magickbox/demo.py): a private carbon-cache +
# graphite-web, two magickbox nodes (the QA bucket installed; routing to the second one),
# sample_statfiles/ ingested, a phantom series sent by DICOM and followed to its report,
# routed and measured, the QA evaluator; then where to look.  Ctrl-C stops everything it
# started.  Options: --serve / --no-serve (keep running after the tour; default: on a
# terminal), --dir DIR (default .hops-demo).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/install-deps.sh
deploy/local/venv.sh
exec .venv/bin/python -m magickbox.demo --dir .hops-demo "$@"
