#!/usr/bin/env bash
# Lint and type-check (configuration in pyproject.toml): ruff over the code, tests and
# benchmarks; mypy over both packages (modules listed as typing debt there are skipped).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/ruff ] || deploy/local/venv.sh test
.venv/bin/ruff check magickbox stability_collector tests benchmarks grafana-dashboards deploy
.venv/bin/mypy
