"""`llm-compression embed`: embed texts, images, audio and video; print shapes and norms, or save."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from .compute_options import add_compute_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed texts, images, audio files and a video with converted models",
        description=(
            "Embed inputs with MultimodalEmbeddingProvider. Texts use --text-model (MiniLM) or, "
            "without it, CLIP's text tower; images and video use --clip-model; audio uses "
            "--audio-model (Whisper). Prints each modality's shape and vector norms."
        ),
    )
    p.add_argument("--text-model", type=Path, help="sentence encoder .parquet (MiniLM/BERT)")
    p.add_argument("--clip-model", type=Path, help="CLIP .parquet (images, video, text fallback)")
    p.add_argument("--audio-model", type=Path, help="Whisper .parquet (audio)")
    # extend: "--text a b" and "--text a --text b" both embed two texts
    p.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT",
                   help="texts to embed (the flag may repeat)")  # fmt: skip
    p.add_argument("--image", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                   help="image files")  # fmt: skip
    p.add_argument("--audio", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                   help="audio files")  # fmt: skip
    p.add_argument("--video", type=Path, metavar="PATH", help="a video file (pooled to one vector)")
    p.add_argument("--frames", type=int, default=16, help="video frames to sample (default 16)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass")
    add_compute_options(p)
    p.add_argument("--skip-errors", action="store_true", help="skip bad images/audio, report them")
    p.add_argument("--similarity", action="store_true", help="print CLIP text x image cosines")
    p.add_argument("--output", type=Path, metavar="FILE.npz", help="save the vectors (numpy .npz)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..provider import EmbeddingResult, MultimodalEmbeddingProvider

    if not (args.text or args.image or args.audio or args.video):
        raise InputError("nothing to embed; pass --text, --image, --audio and/or --video")
    provider = MultimodalEmbeddingProvider(
        text_model=args.text_model, clip_model=args.clip_model, audio_model=args.audio_model,
        dtype=args.dtype, backend=args.backend,
    )  # fmt: skip
    opts = {"batch_size": args.batch_size, "show_progress": args.progress}
    on_error = "skip" if args.skip_errors else "raise"
    vectors: dict[str, np.ndarray] = {}
    skipped: dict[str, list] = {}
    if args.text:
        vectors["text"] = provider.encode_batch(args.text, **opts)
    for name, inputs, encode in (
        ("image", args.image, provider.encode_image),
        ("audio", args.audio, provider.encode_audio),
    ):
        if inputs:
            out = encode([str(x) for x in inputs], on_error=on_error, **opts)
            if isinstance(out, EmbeddingResult):
                skipped[name] = [[i, str(inputs[i]), why] for i, why in out.errors]
                out = out.vectors
            vectors[name] = out
    if args.video:
        vectors["video"] = provider.encode_video(args.video, frames=args.frames)[None, :]
    summary = {
        name: {
            "shape": list(v.shape),
            "norms": [round(float(n), 6) for n in np.linalg.norm(v, axis=1)],
        }
        for name, v in vectors.items()
    }
    if args.similarity and args.text and args.image:
        sims = provider.compute_cross_modal_similarity(args.text, [str(x) for x in args.image])
        summary["text_image_similarity"] = np.round(sims.astype(np.float64), 4).tolist()
    if skipped:
        summary["skipped"] = skipped
    if args.output:
        np.savez(args.output, **vectors)
        summary["output"] = str(args.output)
    _print(summary, as_json=args.json)
    return 0


def _print(summary: dict, *, as_json: bool) -> None:
    if as_json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for name, value in summary.items():
        if isinstance(value, dict) and "shape" in value:
            norms = ", ".join(f"{n:.4f}" for n in value["norms"])
            print(f"{name:6s} shape={tuple(value['shape'])} norms=[{norms}]")
        else:
            print(f"{name}: {value}")
