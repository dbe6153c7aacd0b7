"""Which model made a table's vectors, read from the weight file (never typed by hand).

The one place the tables package reads a weight file (its footer only: no torch, no tensors).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import LLMCompressionError, SchemaMismatchError
from .checksums import file_hash

# which weight file embeds each modality: text prefers the sentence encoder, then CLIP's text tower
MODEL_ROLES = {
    "text": ("text_model", "clip_model"),
    "image": ("clip_model",),
    "clip": ("clip_model",),
    "video": ("clip_model",),
    "audio": ("audio_model",),
}


@dataclass(frozen=True)
class ModelInfo:
    """``name``: the weight file's name without suffix; ``checksum``: xxh3-64 of the whole file
    (two conversions of one model with different weights are different models)."""

    name: str
    checksum: str
    family: str

    def config(self, dim: int) -> dict[str, str]:
        """The table configuration entries that pin a table to this model and dimension."""
        return {"model": self.name, "model_checksum": self.checksum, "model_family": self.family,
                "dim": str(dim)}  # fmt: skip


@functools.cache
def _read(path: str, size: int, mtime_ns: int) -> ModelInfo:
    from ..weightfile import read_metadata  # the weight-file reader's public entry point

    meta = read_metadata(path)  # checks it is a weight file; its family
    return ModelInfo(Path(path).stem, "xxh3_64:" + file_hash(Path(path)), meta.family)


def model_info(path: str | os.PathLike) -> ModelInfo:
    """The identity of the weight file at ``path`` (cached while the file is unchanged)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SchemaMismatchError(
            f"model file {os.fspath(path)!r} cannot be read ({e.strerror}); pass the converted "
            ".parquet weight file that made the vectors"
        ) from e
    try:
        return _read(os.fspath(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    except LLMCompressionError as e:
        raise SchemaMismatchError(
            f"{os.fspath(path)!r} is not a llm_compression weight file ({e}); pass the converted "
            ".parquet file that made the vectors"
        ) from e


def model_paths(**paths: str | os.PathLike | None) -> dict[str, Path]:
    """modality -> weight file, from ``text_model=`` / ``clip_model=`` / ``audio_model=``."""
    out = {}
    for modality, roles in MODEL_ROLES.items():
        found = next((paths[r] for r in roles if paths.get(r) is not None), None)
        if found is not None:
            out[modality] = Path(found)
    return out
