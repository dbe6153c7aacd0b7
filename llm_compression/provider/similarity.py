"""Similarity math on L2-normalised float32 vectors (numpy only)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a float32 ``(N, D)`` matrix; a single ``(D,)`` vector becomes ``(1, D)``."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a (N, D) array of embeddings or one (D,) vector, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf; embed the inputs again")
    return arr


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` cosine similarities between the rows of ``a`` (N, D) and ``b`` (M, D)."""
    a = as_matrix(a, "a")
    b = as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"embedding dimensions differ: a has {a.shape[1]}, b has {b.shape[1]}; "
            "compare vectors from the same model (CLIP's image and text towers share one space)"
        )
    return l2_normalize(a) @ l2_normalize(b).T


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64, returned as float32."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` best ``(index, score)`` pairs of a 1-D score array, best first.

    ``k`` is clipped to ``len(scores)``; ties keep the lower index first.
    """
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise InputError(f"top_k must be a positive integer, got {k!r}")
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")[: min(int(k), scores.size)]
    return [(int(i), float(scores[i])) for i in order]
