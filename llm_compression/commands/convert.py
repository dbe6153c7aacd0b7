"""`llm-compression convert SRC DST`: an upstream checkpoint to a Parquet weight file."""

from __future__ import annotations

import argparse

from ..families import FAMILIES

DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "int8",
    "int4",
    "gguf",
)  # as llm_compression.convert.DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face / CTranslate2 / GGUF / state-dict checkpoint to a weight file",
        description=(
            "Convert SRC (a Hugging Face folder, a CTranslate2 Whisper folder, a GGUF file or a "
            "bare PyTorch state dict) into the weight file DST. The model family is read from the "
            "checkpoint itself; a bare state dict names none, so give --family (e.g. "
            "`--family mobilenet_v2` for torchvision's mobilenet_v2-b0353104.pth)."
        ),
    )
    parser.add_argument("src", help="checkpoint folder or file")
    parser.add_argument("dst", help="weight file to write (e.g. model.parquet)")
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        help="for checkpoints that do not name their architecture (state dicts); must agree otherwise",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float16", help="storage dtype (default: float16)"
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also store the encoders' weight-free ONNX graphs in the file, so "
        "backend='onnxruntime' loads without exporting (and without torch)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    path = convert(
        args.src,
        args.dst,
        family=args.family,
        dtype=args.dtype,
        onnx=args.onnx,
        progress=not args.no_progress,
    )
    size = path.stat().st_size
    print(f"wrote {path} ({size / 2**20:.1f} MiB, {args.dtype})")
    return 0
