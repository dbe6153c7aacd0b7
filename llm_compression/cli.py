"""`llm-compression` command line: argparse subcommands, one module each in `commands/`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
handler ``func(args) -> int``. Handlers import heavy modules lazily so `--help` stays fast.
Typed errors (``LLMCompressionError``) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import LLMCompressionError

COMMAND_MODULES = (
    "convert",
    "export",
    "inspect",
    "transcribe",
    "generate",
    "embed",
    "validate",
    "storage",
    "demo",
    "align",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-compression",
        description="Compressed Parquet model weights and local multimodal inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"llm_compression.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LLMCompressionError as e:
        print(f"llm-compression {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
