"""`llm-compression transcribe FILE AUDIO...`: speech to text, subtitles or JSON segments."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..errors import InputError, LLMCompressionError
from .compute_options import DTYPES

FORMATS = ("txt", "srt", "vtt", "json")
STDIN = "-"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe (or translate) speech with a Whisper weight file",
        description=(
            "Whisper decoding of audio files (wav, flac, ogg, mp3, or anything FFmpeg reads); "
            "'-' reads one file's bytes from stdin. Audio longer than 30 s is decoded in 30 s "
            "windows, each starting where the last complete timestamped segment ended. A file "
            "that cannot be read is reported and the others are still transcribed (exit 2)."
        ),
    )
    p.add_argument("file", metavar="FILE", help="Whisper weight file (.parquet)")
    p.add_argument("audio", metavar="AUDIO", nargs="+", help="audio files; '-' for stdin")
    p.add_argument(
        "--language", help="language code such as 'en' (default: detected from the first 30 s)"
    )
    p.add_argument(
        "--task",
        choices=("transcribe", "translate"),
        default="transcribe",
        help="transcribe, or translate to English (multilingual models only)",
    )
    p.add_argument(
        "--output-format",
        choices=FORMATS,
        default="txt",
        help="txt (text), srt or vtt (subtitles), json (text and segments); default txt",
    )
    p.add_argument(
        "--output-dir",
        metavar="D",
        help="write AUDIO's stem + .FORMAT into D (stdin: 'stdin.FORMAT') instead of printing",
    )
    p.add_argument("--timestamps", action="store_true", help="txt: '[start -> end] text' lines")
    p.add_argument("--max-new-tokens", type=int, default=None, help="token limit per 30 s window")
    p.add_argument(
        "--beam-size", type=int, default=1, help="beam search with this many beams (default 1)"
    )
    p.add_argument(
        "--temperature-fallback",
        action="store_true",
        help="decode again at temperatures 0.2..1.0 when a window's text is repetitive or "
        "unlikely, and skip silent windows (openai-whisper's transcribe)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="float32 (default, text equal to transformers'), bfloat16, or int8 (decoder in "
        "int8, encoder in bfloat16; docs/transcription.md)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..families import require_task
    from ..loader import load_model
    from ..weightfile import read_metadata

    _check_arguments(args)
    require_task(read_metadata(args.file).family, "transcribe", args.file)
    missing = [a for a in args.audio if a != STDIN and not os.path.isfile(a)]
    for source in missing:  # reported before the model loads
        _report(source, f"audio file not found: {source!r}; check the path")
    sources = [a for a in args.audio if a not in missing]
    model = load_model(args.file, dtype=args.dtype) if sources else None
    failed = len(missing)
    for source in sources:
        try:
            _transcribe_one(model, source, args)
        except LLMCompressionError as e:
            failed += 1
            _report(source, str(e))
    return 2 if failed else 0


def _report(source: str, message: str) -> None:
    line = " ".join(message.split())
    print(f"llm-compression transcribe: error: {source}: {line}", file=sys.stderr)


def _check_arguments(args: argparse.Namespace) -> None:
    """Fail before the model loads: stdin named twice, a bad beam size or output folder."""
    if args.audio.count(STDIN) > 1:
        raise InputError("'-' (stdin) can be given once; save the other streams to files")
    if args.beam_size < 1:
        raise InputError(f"--beam-size must be >= 1, got {args.beam_size}")
    if args.output_dir is not None:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)


def _transcribe_one(model, source: str, args: argparse.Namespace) -> None:
    audio = _read_stdin() if source == STDIN else source
    options = dict(
        language=args.language, task=args.task, max_new_tokens=args.max_new_tokens,
        beam_size=args.beam_size, temperature_fallback=args.temperature_fallback,
    )  # fmt: skip
    with _Progress(source, disabled=args.no_progress) as progress:
        if args.output_format == "txt":  # short clips without timestamps: HF's short-form text
            body = model.transcribe(audio, timestamps=args.timestamps, progress=progress, **options)
        else:
            body = render(model.transcribe_segments(audio, progress=progress, **options),
                          args.output_format)  # fmt: skip
    if args.output_dir is None:
        if len(args.audio) > 1:
            print(f"==> {source} <==")
        print(body, end="" if body.endswith("\n") else "\n")
        return
    stem = "stdin" if source == STDIN else Path(source).stem
    out = Path(args.output_dir) / f"{stem}.{args.output_format}"
    out.write_text(body, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


def _read_stdin():
    """The samples of the audio file whose bytes arrive on stdin (any format ``load_audio`` reads)."""
    from ..preprocess.audio import load_audio

    data = sys.stdin.buffer.read()
    if not data:
        raise InputError("stdin held no audio (0 bytes); pipe an audio file into '-'")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stdin-audio"
        path.write_bytes(data)
        return load_audio(path)


class _Progress:
    """A tqdm bar on stderr over the seconds of audio decoded (one update per window)."""

    def __init__(self, name: str, *, disabled: bool) -> None:
        self.name, self.disabled, self.bar = name, disabled, None

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total / 100, unit="s", desc=self.name, file=sys.stderr,
                            disable=self.disabled, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s")  # fmt: skip
        self.bar.update(done / 100 - self.bar.n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def render(transcript, fmt: str) -> str:
    """The transcript (``Whisper.transcribe_segments``) as srt, vtt or json."""
    if fmt == "json":
        return json.dumps(transcript.as_dict(), ensure_ascii=False, indent=2)
    return transcript.subtitles(fmt)
