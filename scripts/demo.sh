#!/usr/bin/env bash
# Set up (scripts/setup_env.sh) and run the main job on the built-in default: convert the packaged real
# models to zstd Parquet, then embed, store and search real text, images and audio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/llm-compression demo "$@"
