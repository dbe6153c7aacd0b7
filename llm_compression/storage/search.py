"""Exact cosine top-k over an in-memory, L2-normalised float32 matrix (numpy BLAS + argpartition).

The matrix holds every row of a modality table in fragment order (deleted rows included, masked at
query time), grows by doubling so appends cost the batch, and is rebuilt only when the set of
fragments changes other than by appending (a compaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SCORE_BUDGET = 1 << 25  # float32 scores per block (128 MiB): bounds memory of batched queries
MIN_BLOCK_ROWS = 1 << 16
GATHER_FRACTION = 0.25  # filters keeping fewer rows than this gather them instead of masking


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits of one query: ids and cosine similarities, best first.

    Iterating yields ``(id, score)`` pairs.
    """

    ids: tuple[str, ...]
    scores: np.ndarray  # (k,) float32, descending

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(zip(self.ids, self.scores.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, float]:
        return self.ids[i], float(self.scores[i])


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, in a new array)."""
    out = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    norms[norms == 0] = 1.0
    out /= norms[:, None]
    return out


class VectorIndex:
    """A growable (n, dim) float32 matrix of unit rows, appended in fragment order."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self._buf = np.empty((0, dim), np.float32)

    @property
    def matrix(self) -> np.ndarray:
        return self._buf[: self.n]  # (n, dim), C-contiguous

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in total (appends then copy nothing)."""
        if rows > len(self._buf):
            grown = np.empty((rows, self.dim), np.float32)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown

    def append(self, vectors: np.ndarray) -> None:
        m = len(vectors)
        if self.n + m > len(self._buf):
            self.reserve(max(self.n + m, 2 * len(self._buf), 1024))
        out = self._buf[self.n : self.n + m]
        out[...] = vectors
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        norms[norms == 0] = 1.0
        out /= norms[:, None]
        self.n += m

    def topk(
        self, queries: np.ndarray, k: int, *, dead: np.ndarray, allow: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (unit rows of ``queries``): (rows, scores) of the best ``k``, best first.

        ``dead``: sorted row numbers never returned; ``allow``: sorted row numbers that may be
        returned (a filter), or None for all.
        """
        if allow is not None:
            allow = np.setdiff1d(allow, dead, assume_unique=True)
            if len(allow) < GATHER_FRACTION * self.n:
                rows, scores = _topk_dense(self.matrix[allow], queries, k, np.empty(0, np.int64))
                return [(allow[r], s) for r, s in zip(rows, scores, strict=True)]
            dead = np.setdiff1d(np.arange(self.n), allow, assume_unique=True)
        rows, scores = _topk_dense(self.matrix, queries, k, dead)
        return list(zip(rows, scores, strict=True))


def _topk_dense(
    matrix: np.ndarray, queries: np.ndarray, k: int, dead: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    n, q = len(matrix), len(queries)
    k = min(k, n)
    if k == 0:
        return [np.empty(0, np.int64)] * q, [np.empty(0, np.float32)] * q
    block = max(MIN_BLOCK_ROWS, SCORE_BUDGET // q)
    cand_rows, cand_scores = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        if q == 1:
            scores = (matrix[start:stop] @ queries[0])[None, :]  # (1, B): one gemv
        else:
            scores = queries @ matrix[start:stop].T  # (Q, B)
        lo, hi = np.searchsorted(dead, [start, stop])
        if hi > lo:
            scores[:, dead[lo:hi] - start] = -np.inf
        kk = min(k, stop - start)
        part = np.argpartition(scores, -kk, axis=1)[:, -kk:]  # (Q, kk), unordered
        cand_rows.append(part + start)
        cand_scores.append(np.take_along_axis(scores, part, axis=1))
    rows = np.concatenate(cand_rows, axis=1)  # (Q, blocks*k)
    scores = np.concatenate(cand_scores, axis=1)
    out_rows, out_scores = [], []
    for r, s in zip(rows, scores, strict=True):
        order = np.lexsort((r, -s))[:k]  # best score first, ties by row number
        keep = order[np.isfinite(s[order])]
        out_rows.append(r[keep])
        out_scores.append(s[keep])
    return out_rows, out_scores
