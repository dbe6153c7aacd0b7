"""`llm-compression report [--image F] [--audio F] [--text T] --checkpoint C [--json]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write the pet-behaviour JSON report from any subset of image, audio and text",
        description="A report (emotion, behaviours, confidence, evidence per modality) that always "
        "validates against its schema; absent modalities use the checkpoint's <MISSING> tokens.",
    )
    p.add_argument("--image", type=Path, help="an image file")
    p.add_argument("--audio", type=Path, help="an audio file")
    p.add_argument("--video", type=Path, help="a video file (when the checkpoint aligns video)")
    p.add_argument("--text", help="a text")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="align.parquet written by `llm-compression align train`")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..align.run import Reporter

    if all(x is None for x in (args.image, args.audio, args.video, args.text)):
        raise InputError("no input given; pass --image, --audio, --video and/or --text")
    report = Reporter(args.checkpoint).report(
        image=args.image, audio=args.audio, text=args.text, video=args.video
    )
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"emotion:    {report['emotion']} (confidence {report['confidence']:.2f})")
    print(f"behaviours: {', '.join(report['behaviours'])}")
    for m, e in report["evidence"].items():
        seen = f"nearest {e['nearest']} (cos {e['score']:.2f})" if e["present"] else "missing"
        print(f"{m + ':':<11} {seen}")
    return 0
