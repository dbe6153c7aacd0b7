"""Helpers for the embedding-table tests: tiny weight files to name a table's model, vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def weight_file(folder: Path, name: str = "tiny-minilm", seed: int = 0) -> Path:
    """A small valid weight file (a MiniLM config with a few tensors): the tables only read its
    footer to learn the model's name and checksum."""
    from llm_compression.families import preset
    from llm_compression.weightfile import write_model

    path = folder / f"{name}.parquet"
    if not path.exists():
        rng = np.random.default_rng(seed)
        tensors = {"embed.token.weight": rng.standard_normal((4, 8)).astype(np.float32)}
        write_model(path, tensors, config=preset("all-minilm-l6-v2"), dtype="float32")
    return path


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
