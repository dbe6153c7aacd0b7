"""Convert a Hugging Face CLIPModel folder to Parquet.

No package ships real CLIP weights: without --src this builds a random-init ViT-B/32
(transformers CLIPModel(CLIPConfig()), seed 0) with OpenAI's BPE vocabulary and converts that.
Random weights are fine for engine parity and speed, not for semantic search.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _convert_common import parser, run

from llm_compression.convert.random_init import save_random_clip

if __name__ == "__main__":
    args = parser(__doc__, "models/clip-vit-b-32-random.parquet").parse_args()
    if args.src:
        sys.exit(run(args.src, args))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(run(save_random_clip(Path(tmp) / "clip"), args))
