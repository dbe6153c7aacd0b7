"""`llm-compression generate FILE --prompt ...`: text generation with a causal LM weight file."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..errors import ModelFileNotFoundError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a converted causal LM (OLMo, Llama / SmolLM2)",
        description=(
            "Generate text after a prompt. Greedy by default (--temperature 0); --temperature with "
            "--top-k / --top-p samples, --seed makes sampling reproducible. --chat wraps the prompt "
            "in the tokenizer's chat template. --stream prints text as it is generated."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="causal LM weight file (.parquet)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--stop", action="append", default=[], metavar="S",
                   help="stop before this string (repeatable)")  # fmt: skip
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.set_defaults(func=run)


def check_family(path: Path) -> str:
    """The file's family, or WrongFamilyError when it cannot generate (reads metadata only)."""
    from ..families import require_task
    from ..weightfile import read_metadata

    if not path.is_file():
        raise ModelFileNotFoundError(
            f"no weight file at {path}; pass the .parquet written by convert"
        )
    family = read_metadata(path).family
    require_task(family, "generate", path)
    return family


def run(args: argparse.Namespace) -> int:
    from ..loader import load_model

    check_family(args.file)
    start = time.perf_counter()
    model = load_model(args.file)
    log.info("loaded %s in %.2f s", args.file, time.perf_counter() - start)
    options = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, stop=args.stop or None, chat=args.chat, seed=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    if args.stream:
        for piece in model.stream(args.prompt, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(model.generate(args.prompt, **options))
    log.info("generated in %.2f s", time.perf_counter() - start)
    return 0
