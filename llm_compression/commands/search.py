"""`llm-compression search STORE --text Q | --image F | --audio F`: exact top-k of a store."""

from __future__ import annotations

import argparse
import json

from .compute_options import add_compute_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search an embedding store with text, an image or an audio file",
        description="Exact cosine top-k over a store's table; the query is embedded with the "
        "model files the store was indexed with (or those given).",
    )
    parser.add_argument("store", help="the store directory")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query")
    query.add_argument("--image", help="an image file")
    query.add_argument("--audio", help="an audio file")
    parser.add_argument("--k", type=int, default=10, help="results to return (10)")
    parser.add_argument("--where", help="SQL predicate, e.g. \"metadata.lang = 'en'\"")
    parser.add_argument("--modality", help="the table to search (default: from the query kind)")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON")
    for name in ("text", "clip", "audio"):
        parser.add_argument(f"--{name}-model", help=f"the {name} weight file (default: as indexed)")
    add_compute_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ModelFileNotFoundError
    from ..tables import MultimodalStorage

    store = MultimodalStorage(args.store, create=False, text_model=args.text_model,
                              clip_model=args.clip_model, audio_model=args.audio_model,
                              dtype=args.dtype, backend=args.backend)  # fmt: skip
    query = args.text if args.text is not None else Path(args.image or args.audio)
    if not isinstance(query, str) and not query.is_file():
        raise ModelFileNotFoundError(f"query file {query} does not exist; pass an existing file")
    modality = args.modality or ("audio" if args.audio else None)
    if args.image and not modality:
        modality = "image" if "image" in store.modalities else "clip"
    hits = store.search(query, k=args.k, modality=modality, where=args.where)
    rows = [{"id": h.id, "score": round(h.score, 6), "source": h.source, "metadata": h.metadata}
            for h in hits]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        for rank, row in enumerate(rows, 1):
            print(
                f"{rank:>3}  {row['score']:.4f}  {row['id']}"
                + (f"  {row['metadata']}" if row["metadata"] else "")
            )
    return 0
