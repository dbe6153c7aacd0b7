"""Convert Whisper to Parquet (default: the packaged CTranslate2 Whisper base; --tiny-en for tiny.en).

--src takes a Hugging Face Whisper folder or a CTranslate2 folder (model.bin + config.json +
tokenizer.json).
"""

from __future__ import annotations

import sys

from _convert_common import parser, run

from llm_compression.weights import packaged_whisper_base, packaged_whisper_tiny_en

if __name__ == "__main__":
    p = parser(__doc__, "models/whisper-base.parquet")
    p.add_argument("--tiny-en", action="store_true", help="the packaged Whisper tiny.en instead")
    args = p.parse_args()
    default = packaged_whisper_tiny_en() if args.tiny_en else packaged_whisper_base()
    sys.exit(run(args.src or default, args))
