"""The store directory: ``store.json`` (format, and the model files ``index`` used) and one
Delta table per modality under it, plus ``_files`` (what ``add_files`` saw)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..errors import StoreNotFoundError
from . import delta

MARKER = "store.json"
FORMAT = {"format": "llm_compression embedding tables (Delta Lake)", "version": 2}


def open_or_create(path: Path, create: bool) -> None:
    """Check ``path`` is a store, or make one; safe when several processes create it at once."""
    if (path / MARKER).is_file():
        return
    if (path / "manifests").is_dir():
        raise StoreNotFoundError(
            f"{path} is an embedding store of the old format (manifests/ and fragments, before "
            "Delta Lake tables); re-index its inputs into a new store with `llm-compression index`"
        )
    leftovers = [p for p in path.iterdir() if not p.name.startswith(".")] if path.is_dir() else []
    if (path / MARKER).is_file():  # another process created it since the first look
        return
    if not create or leftovers or (path.exists() and not path.is_dir()):
        raise StoreNotFoundError(
            f"{path} is not an embedding store (no {MARKER}); pass the directory of an existing "
            "store, or a new or empty one with create=True"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / delta.LOCK_FILE).touch()
    _write(path, FORMAT)  # concurrent creators write the same content


def _write(path: Path, content: dict) -> None:
    tmp = path / f".{MARKER}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(content, indent=1))
    os.replace(tmp, path / MARKER)  # atomic


def remembered_models(path: Path) -> dict[str, Path]:
    """modality -> weight file that ``index`` last used, so that ``search`` needs no flags."""
    try:
        models = json.loads((path / MARKER).read_text()).get("model_files", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return {m: Path(p) for m, p in models.items() if isinstance(p, str)}


def remember_models(path: Path, models: dict[str, Path]) -> None:
    """Record the model files (call with the write lock held)."""
    content = json.loads((path / MARKER).read_text())
    content["model_files"] = {**content.get("model_files", {}),
                              **{m: str(Path(p).resolve()) for m, p in models.items()}}  # fmt: skip
    _write(path, content)
