#!/usr/bin/env bash
# Run a private carbon-cache (port 2003) and graphite-web (http://127.0.0.1:8080/) on
# loopback in the foreground, with the HOPS configs and state in .hops-graphite/.
# Uses Debian's graphite-carbon / graphite-web / gunicorn (installed if missing).
# Options: --dir DIR --line-port N --web-port N --no-web.  Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/install-deps.sh
[ -x .venv/bin/python ] || deploy/local/venv.sh
exec .venv/bin/python -m stability_collector.localgraphite "$@"
