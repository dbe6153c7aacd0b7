"""`llm-compression export FILE DIR`: a weight file back to a Hugging Face folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a weight file as a Hugging Face folder (config.json, model.safetensors, ...)",
        description=(
            "Write the model in FILE as a Hugging Face folder DIR: config.json, model.safetensors "
            "(float32; every tensor under its upstream name, unused source tensors included) and "
            "the bundled tokenizer files. transformers loads DIR with from_pretrained."
        ),
    )
    parser.add_argument("file", help="the .parquet weight file")
    parser.add_argument("dir", help="folder to write (created; same-named files are replaced)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import export

    folder = export(args.file, args.dir)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    print(f"wrote {folder}: {', '.join(files)}")
    return 0
