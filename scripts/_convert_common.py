"""Shared argument handling for the scripts/convert_*_to_parquet.py wrappers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llm_compression.convert import DTYPES, convert


def parser(description: str, default_dst: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--src", type=Path, help="checkpoint to convert (default: see description)")
    p.add_argument("--dst", type=Path, default=Path(default_dst), help=f"default: {default_dst}")
    p.add_argument("--dtype", choices=DTYPES, default="float16")
    return p


def run(src: Path, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = convert(src, args.dst, dtype=args.dtype, progress=True)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.dtype})")
    return 0
