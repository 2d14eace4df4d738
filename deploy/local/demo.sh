#!/usr/bin/env bash
# Set up everything and run the HOPS demo: a private carbon-cache + graphite-web on
# loopback, a year of sample phantom reports from two scanners ingested, values read
# back.  Extra arguments go to 'hops-stability demo' (e.g. --serve to keep Graphite up).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/install-deps.sh
deploy/local/venv.sh
exec .venv/bin/hops-stability demo --dir .hops-demo "$@"
