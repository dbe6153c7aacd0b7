#!/usr/bin/env bash
# Set up (scripts/setup_env.sh) and run the whole check: lint, format, every test, coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collects no test; `set -e` turns that into a failure too.
.venv/bin/python -m pytest -q -p no:cacheprovider --cov=llm_compression --cov-report=term "$@"
