#!/usr/bin/env python
"""Validate a converted weight file against Hugging Face transformers (= `llm-compression validate`).

    python scripts/validate_model_conversion.py minilm.parquet --reference path/to/all-MiniLM-L6-v2 \
        [--json report.json]

Prints min cosine / max abs diff / exact matches per output; exits 1 below the dtype threshold.
"""

from __future__ import annotations

import sys

from llm_compression.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
