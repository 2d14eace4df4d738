#!/usr/bin/env bash
# Set up everything and run the HOPS test suite against real servers (carbon-cache,
# graphite-web, ...) that the tests start on loopback ports.  Extra arguments go to
# pytest.  The long fault-injection / soak runs are bounded here; HOPS_LONG=1 runs them
# in full.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/install-deps.sh
deploy/local/venv.sh test
exec .venv/bin/python -m pytest "$@"
