"""`llm-compression generate FILE --prompt ...`: text generation with a causal LM weight file."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from pathlib import Path

from ..errors import InputError, ModelFileNotFoundError

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
    src = p.add_mutually_exclusive_group()  # one of them: _finish_parse (a late "-" counts)
    src.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="the prompt text; repeat it for several prompts (decoded together)",
    )
    src.add_argument("--prompt-file", type=Path, metavar="F", help="read the prompt from file F")
    src.add_argument(
        "--prompts-file",
        type=Path,
        metavar="F",
        help="one prompt per line of F (empty lines skipped), decoded together",
    )
    src.add_argument("stdin", nargs="?", choices=["-"], help="-: read the prompt from stdin")
    p.set_defaults(finish_parse=functools.partial(_finish_parse, p))
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="several prompts are decoded N at a time (default 8); each one's "
        "greedy text equals its text alone. Output: one JSON line per prompt",
    )
    p.add_argument("--system", default=None, help="a system message (implies --chat)")
    p.add_argument(
        "--dtype",
        choices=["float32", "int8", "int4"],
        default="float32",
        help="compute from float32 (default) or the int8 / int4 weights (ONNX Runtime)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="float32 on torch (default, exact) or on ONNX Runtime's decoder graph (~1.5x "
        "faster decode); int8 / int4 run on ONNX Runtime either way",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print prompt and decode tokens/s and peak memory to stderr",
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--min-new-tokens", type=int, default=0,
                   help="no end-of-sequence token before this many new tokens (default 0)")  # fmt: skip
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


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise InputError(f"cannot read the prompt file {path}: {e}") from e


def _finish_parse(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]):
    """Take a ``-`` given after the options (``generate FILE --chat -``): argparse fills the
    optional positional in the first run of positionals, so a later ``-`` comes back unparsed.
    Then exactly one prompt source must be there. Returns what is still unrecognized."""
    if "-" in extra and args.stdin is None:
        extra = list(extra)
        extra.remove("-")
        args.stdin = "-"
    sources = (args.prompt, args.prompt_file, args.prompts_file, args.stdin)
    given = sum(x is not None for x in sources)
    if given != 1:
        parser.error(
            "one of the arguments --prompt --prompt-file --prompts-file - is required"
            if not given
            else "give the prompt one way: --prompt, --prompt-file, --prompts-file or -"
        )
    return extra


def _prompts(args: argparse.Namespace) -> list[str]:
    """The prompt texts: one, or several (repeated --prompt, --prompts-file)."""
    if args.prompts_file is not None:
        texts = [line for line in _read(args.prompts_file).splitlines() if line.strip()]
        if not texts:
            raise InputError(f"{args.prompts_file} holds no prompt; write one prompt per line")
        return texts
    if args.prompt_file is not None:
        return [_read(args.prompt_file)]
    return [sys.stdin.read()] if args.prompt is None else args.prompt


def _with_system(text: str, system: str | None):
    if system is None:
        return text
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..loader import load_model

    check_family(args.file)
    prompts = _prompts(args)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if len(prompts) > 1 and args.stream:
        raise InputError("--stream prints one prompt's text; drop --stream for several prompts")
    start = time.perf_counter()
    dtype = torch.float32 if args.dtype == "float32" else args.dtype
    model = load_model(args.file, dtype=dtype, backend=args.backend)
    log.info("loaded %s in %.2f s", args.file, time.perf_counter() - start)
    options = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, stop=args.stop or None, chat=args.chat or args.system is not None,
        seed=args.seed, min_new_tokens=args.min_new_tokens,
    )  # fmt: skip
    if len(prompts) > 1:
        return _run_batches(model, prompts, args, options)
    timer = StepTimer()
    pieces = timer.wrap(model.stream(_with_system(prompts[0], args.system), **options))
    if args.stream:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print("".join(pieces))
    if args.verbose:
        sys.stderr.write(timer.report(model) + "\n")
    return 0


def _run_batches(model, prompts: list[str], args: argparse.Namespace, options: dict) -> int:
    """Several prompts, ``--batch-size`` at a time: one JSON line ``{"prompt", "text"}`` each."""
    import json

    start, counts = time.perf_counter(), [0, 0]
    for i in range(0, len(prompts), args.batch_size):
        batch = prompts[i : i + args.batch_size]
        texts = model.generate([_with_system(p, args.system) for p in batch], **options)
        counts = [c + n for c, n in zip(counts, model.last_counts, strict=True)]
        for prompt, text in zip(batch, texts, strict=True):
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False), flush=True)
    if args.verbose:
        seconds = max(time.perf_counter() - start, 1e-9)
        sys.stderr.write(
            f"{len(prompts)} prompts ({counts[0]} tokens), {counts[1]} new tokens in "
            f"{seconds:.2f} s ({counts[1] / seconds:.1f} tokens/s)\n"
            f"peak memory: {_peak_mib():.0f} MiB\n"
        )
    return 0


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer:
    """Times a stream of text pieces: the first piece closes the prompt (prefill) phase."""

    def __init__(self) -> None:
        self.start = self.first = self.end = 0.0
        self.pieces = 0

    def wrap(self, pieces):
        self.start = time.perf_counter()
        for piece in pieces:
            if not self.pieces:
                self.first = time.perf_counter()
            self.pieces += 1
            yield piece
        self.end = time.perf_counter()

    def report(self, model) -> str:
        n_prompt, n_new = model.last_counts if hasattr(model, "last_counts") else (0, 0)
        prefill = max(self.first - self.start, 1e-9)
        decode = max(self.end - self.first, 1e-9)
        peak = _peak_mib()
        return (
            f"prompt: {n_prompt} tokens in {prefill * 1e3:.0f} ms ({n_prompt / prefill:.1f} tokens/s)\n"
            f"decode: {n_new} tokens in {decode * 1e3:.0f} ms "
            f"({max(n_new - 1, 0) / decode:.1f} tokens/s)\npeak memory: {peak:.0f} MiB"
        )
