"""`llm-compression align train CONFIG`: train the aligned space (and the report projector)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align",
        help="train projection heads into one multimodal space (and the report projector)",
        description="Alignment training from a TOML config (docs/alignment.md).",
    )
    sub = p.add_subparsers(dest="align_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="run every stage of a TOML config")
    t.add_argument("config", type=Path, metavar="CONFIG", help="the training config (.toml)")
    t.add_argument(
        "--from", dest="start", type=Path, metavar="CHECKPOINT",
        help="start from this checkpoint's heads and projector instead of fresh ones",
    )  # fmt: skip
    t.add_argument(
        "--stage", dest="stages", action="append", metavar="NAME",
        help="run only this stage of the config (repeatable; default: every stage)",
    )  # fmt: skip
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..align import load_config
    from ..align.run import train

    path = train(load_config(args.config), start=args.start, stages=args.stages)
    print(path)
    return 0
