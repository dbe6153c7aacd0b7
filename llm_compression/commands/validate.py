"""`llm-compression validate PARQUET --reference SRC`: precision against Hugging Face transformers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="compare a weight file with Hugging Face transformers on fixed real inputs",
        description=(
            "Run PARQUET and the Hugging Face model built from SRC (the source it was converted "
            "from: HF folder, GGUF file or CTranslate2 Whisper folder) on fixed photos, speech, "
            "sentences and prompts; print min cosine, max abs diff and exact matches per output. "
            "Exits 1 when an output is below the threshold of the file's storage dtype."
        ),
    )
    parser.add_argument("parquet", help="weight file to check")
    parser.add_argument("--reference", required=True, metavar="SRC", help="upstream source")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="IMAGE",
        help="CLIP: these images instead of the fixed photos",
    )
    parser.add_argument("--no-text", action="store_true", help="CLIP: the vision tower only")
    parser.set_defaults(func=run)


def inputs_from_args(args: argparse.Namespace, family: str):
    """The family's fixed inputs, with the CLIP overrides of the command line."""
    from dataclasses import replace

    from ..validation.inputs import default_inputs

    inputs = default_inputs(family)
    if family == "clip":
        if args.images:
            inputs = replace(inputs, images=tuple(Path(p) for p in args.images))
        if args.no_text:
            inputs = replace(inputs, sentences=())
    return inputs


def run(args: argparse.Namespace) -> int:
    from ..validation import validate
    from ..weightfile import read_metadata

    family = read_metadata(args.parquet).family
    family = "llama" if family == "olmo" else family  # both use the LLM inputs
    report = validate(
        args.parquet, args.reference, inputs=inputs_from_args(args, family), raise_on_failure=False
    )
    print(report.table())
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.to_json())
        print(f"wrote {path}", file=sys.stderr)
    return 0 if report.passed else 1
