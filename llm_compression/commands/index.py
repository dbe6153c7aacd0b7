"""`llm-compression index INPUTS... --store S`: embed folders, globs and files into a store."""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from pathlib import Path

from .compute_options import add_compute_options

log = logging.getLogger(__name__)
BATCH_FILES = 64  # files embedded and committed together


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index",
        help="embed files (text, .jsonl, images, audio) into an embedding store",
        description="Walk folders and globs, pick each file's modality from its content, embed it "
        "and store it; unchanged files (path, size, mtime) are skipped on a rerun, and failures "
        "are recorded in the store with their reason (docs/storage.md).",
    )
    parser.add_argument("inputs", nargs="+", help="files, folders (walked) or globs ('**/*.png')")
    parser.add_argument("--store", required=True, help="the store directory (made if missing)")
    parser.add_argument("--text-model", help="sentence encoder weight file (MiniLM) for text")
    parser.add_argument("--clip-model", help="CLIP weight file for images (and text without one)")
    parser.add_argument("--audio-model", help="Whisper weight file for audio")
    parser.add_argument("--text-field", default="text", help="the field of .jsonl lines (text)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_compute_options(parser)
    parser.set_defaults(func=run)


def expand(inputs: list[str], store: Path) -> tuple[list[Path], list[str]]:
    """(files, inputs that matched nothing): folders walked, globs expanded, hidden files and
    the store itself left out, each file once in a stable order."""
    files, missing, store = [], [], store.resolve()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file()]
        found = [p.resolve() for p in found if not any(s.startswith(".") for s in p.parts[-1:])]
        found = [p for p in found if store not in p.parents]
        if not found:
            missing.append(item)
        files += sorted(found)
    return list(dict.fromkeys(files)), missing


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import ConfigError, ModelFileNotFoundError
    from ..tables import MultimodalStorage

    given = {f"--{k}-model": getattr(args, f"{k}_model") for k in ("text", "clip", "audio")}
    if not any(given.values()):
        raise ConfigError(
            "index needs a model: pass --text-model, --clip-model and/or --audio-model"
        )
    for flag, path in given.items():
        if path is not None and not Path(path).is_file():
            raise ModelFileNotFoundError(f"{flag} {path}: no such file; pass a converted .parquet")
    store = MultimodalStorage(args.store, text_model=args.text_model, clip_model=args.clip_model,
                              audio_model=args.audio_model, dtype=args.dtype,
                              backend=args.backend)  # fmt: skip
    store.remember_models()
    files, missing = expand(args.inputs, store.path)
    known = store.file_log()
    todo = [f for f in files if known.get(str(f)) != _key(f)]
    stored, failed = 0, dict.fromkeys(missing, "no such file, folder or matching glob")
    bar = tqdm(total=len(todo), unit="file", disable=args.no_progress, file=sys.stderr)
    for start in range(0, len(todo), BATCH_FILES):
        report = store.add_files(todo[start : start + BATCH_FILES], text_field=args.text_field)
        stored += len(report.stored)
        failed.update(report.failed)
        bar.update(min(BATCH_FILES, len(todo) - start))
    bar.close()
    for path, reason in failed.items():
        print(f"failed {path}: {reason}")
    print(f"{args.store}: {stored} files stored, {len(files) - len(todo)} unchanged and skipped, "
          f"{len(failed)} failed; {store.count()} rows")  # fmt: skip
    return 1 if failed else 0


def _key(path: Path) -> tuple[int, int, str] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, "stored"
