"""`llm-compression transcribe FILE AUDIO`: speech to text with a converted Whisper model."""

from __future__ import annotations

import argparse
import os

from ..errors import ModelFileNotFoundError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe (or translate) speech with a Whisper weight file",
        description=(
            "Greedy Whisper decoding of an audio file (wav, flac, ogg, mp3, or anything FFmpeg "
            "reads). Audio longer than 30 s is transcribed in consecutive 30 s windows."
        ),
    )
    p.add_argument("file", metavar="FILE", help="Whisper weight file (.parquet)")
    p.add_argument("audio", metavar="AUDIO", help="audio file to transcribe")
    p.add_argument(
        "--language", help="language code such as 'en' (default: detected from the first 30 s)"
    )
    p.add_argument(
        "--task",
        choices=("transcribe", "translate"),
        default="transcribe",
        help="transcribe, or translate to English (multilingual models only)",
    )
    p.add_argument("--timestamps", action="store_true", help="print '[start -> end] text' segments")
    p.add_argument("--max-new-tokens", type=int, default=None, help="token limit per 30 s window")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..families import require_task
    from ..loader import load_model
    from ..weightfile import read_metadata

    if not os.path.isfile(args.audio):  # fail before the model loads
        raise ModelFileNotFoundError(f"audio file not found: {args.audio!r}; check the path")
    require_task(read_metadata(args.file).family, "transcribe", args.file)
    model = load_model(args.file)
    text = model.transcribe(
        args.audio,
        language=args.language,
        task=args.task,
        timestamps=args.timestamps,
        max_new_tokens=args.max_new_tokens,
    )
    print(text)
    return 0
