"""`llm-compression` command line: argparse subcommands, one module each in `commands/`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
handler ``func(args) -> int``. Handlers import heavy modules lazily so `--help` stays fast.
Typed errors (``LLMCompressionError``) and ``OSError`` from a path the user gave (unwritable,
missing, a file where a folder is expected) are printed as one line and exit with status 2; any
other exception is a bug and keeps its traceback.
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
    "tables",
    "index",
    "search",
    "demo",
    "serve",
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
    _escape_unprintable_output()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    finish = getattr(args, "finish_parse", None)  # a command's own last word on its arguments
    if finish is not None:
        extra = finish(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
        return _fail(args.command, str(e))
    except OSError as e:  # a path the user gave: missing, unwritable, a file for a folder ...
        return _fail(args.command, _os_message(e))
    except KeyboardInterrupt:
        return 130


def _escape_unprintable_output() -> None:
    """Print what UTF-8 cannot encode as escapes, never fail on it.

    Arguments that are not valid UTF-8 (a file name with a stray byte) reach Python as lone
    surrogates; echoing one (``wrote PATH``, argparse's usage errors) must not end in a traceback.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="backslashreplace")


def _fail(command: str, message: str) -> int:
    """One line on stderr, exit status 2: user errors never print a traceback."""
    line = " ".join(message.split())
    print(f"llm-compression {command}: error: {line}", file=sys.stderr)
    return 2


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(repr(str(p)) for p in paths)
    hint = "check the path, that its folder exists and that you may read or write there"
    return f"{where}: {what}; {hint}" if where else f"{what}; {hint}"


if __name__ == "__main__":
    sys.exit(main())
