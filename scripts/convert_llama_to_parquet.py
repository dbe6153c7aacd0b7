"""Convert a Llama-family model to Parquet (default: the packaged SmolLM2-135M-Instruct GGUF).

--src takes a GGUF file or a Hugging Face LlamaForCausalLM folder.
"""

from __future__ import annotations

import sys

from _convert_common import parser, run

from llm_compression.weights import packaged_smollm2

if __name__ == "__main__":
    args = parser(__doc__, "models/smollm2-135m.parquet").parse_args()
    sys.exit(run(args.src or packaged_smollm2(), args))
