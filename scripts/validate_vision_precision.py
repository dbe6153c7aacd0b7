#!/usr/bin/env python
"""Validate the CLIP vision tower alone: image embeddings of ours vs HF ``CLIPModel``.

    python scripts/validate_vision_precision.py clip.parquet --reference path/to/clip-folder \
        [--images a.jpg b.png] [--json report.json]

Uses the scikit-image photos unless ``--images`` is given; each side runs its own preprocessing
(ours: preprocess.image, HF: CLIPImageProcessor). Exits 1 below the dtype threshold.
"""

from __future__ import annotations

import sys

from llm_compression.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", "--no-text", *sys.argv[1:]]))
