"""Exact cosine top-k over in-memory, L2-normalised float32 rows (numpy BLAS + argpartition).

The index holds every row of a modality table in fragment order (deleted rows included, masked at
query time) as a list of contiguous chunks: a large append becomes its own chunk as given (no
copy), small appends are copied into a tail chunk that grows by doubling up to ``TAIL_BYTES``. So an
append costs its batch, never a copy of the rows already held, and the index is rebuilt only when the
set of fragments changes other than by appending (a compaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SCORE_BUDGET = 1 << 25  # float32 scores per block (128 MiB): bounds memory of batched queries
MIN_BLOCK_ROWS = 1 << 16
GATHER_FRACTION = 0.25  # filters keeping fewer rows than this gather them instead of masking
TAIL_BYTES = 1 << 26  # small appends share a tail chunk of up to 64 MiB (43,690 rows at dim 384)


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


def normalize(
    vectors: np.ndarray, squares: np.ndarray | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows scaled to unit L2 norm, written to ``out`` (default: a new float32 array).

    ``squares``: the rows' squared norms when the caller has them (validation computes them), so
    that normalising is one pass over the data: read ``vectors``, write ``out``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if squares is None:
        squares = np.einsum("ij,ij->i", vectors, vectors)
    norms = np.sqrt(squares, dtype=np.float32)
    norms[norms == 0] = 1.0
    if out is None:
        out = np.empty(vectors.shape, np.float32)
    np.divide(vectors, norms[:, None], out=out)
    return out


class VectorIndex:
    """(n, dim) float32 unit rows in chunks, appended in fragment order."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.chunks: list[np.ndarray] = []  # (m_i, dim) C-contiguous unit rows, in row order
        self.starts: list[int] = []  # row number of each chunk's first row
        self._tail: np.ndarray | None = None  # buffer whose filled part is chunks[-1], or None
        self._tail_rows = max(1024, TAIL_BYTES // (4 * dim))

    def append(self, unit: np.ndarray) -> None:
        """Append rows already scaled to unit norm; large arrays are kept as given (not copied)."""
        m = len(unit)
        if m == 0:
            return
        if m >= self._tail_rows // 2:
            self._push(np.ascontiguousarray(unit, np.float32))
            self._tail = None
            return
        used = len(self.chunks[-1]) if self._tail is not None else 0
        if self._tail is None or used + m > self._tail_rows:
            self._tail, used = (
                np.empty((min(self._tail_rows, max(1024, 2 * m)), self.dim), np.float32),
                0,
            )
            self._push(self._tail[:0])
        elif used + m > len(self._tail):
            grown = np.empty(
                (min(self._tail_rows, max(2 * len(self._tail), used + m)), self.dim), np.float32
            )
            grown[:used] = self._tail[:used]
            self._tail = grown
        self._tail[used : used + m] = unit
        self.chunks[-1] = self._tail[: used + m]
        self.n += m

    def _push(self, chunk: np.ndarray) -> None:
        self.starts.append(self.n)
        self.chunks.append(chunk)
        self.n += len(chunk)

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        """The unit rows of sorted row numbers ``wanted``, gathered into one (len, dim) array."""
        bounds = np.searchsorted(wanted, [*self.starts, self.n])
        parts = [
            chunk[wanted[lo:hi] - start]
            for chunk, start, lo, hi in zip(
                self.chunks, self.starts, bounds[:-1], bounds[1:], strict=True
            )
            if hi > lo
        ]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)

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
                rows, scores = _topk_dense([self.rows(allow)], [0], queries, k, _NONE)
                return [(allow[r], s) for r, s in zip(rows, scores, strict=True)]
            dead = np.setdiff1d(np.arange(self.n), allow, assume_unique=True)
        rows, scores = _topk_dense(self.chunks, self.starts, queries, k, dead)
        return list(zip(rows, scores, strict=True))


_NONE = np.empty(0, np.int64)


def _blocks(chunks: list[np.ndarray], starts: list[int], block: int):
    """(first row number, (rows, dim) view) blocks of at most ``block`` rows, in row order."""
    for chunk, first in zip(chunks, starts, strict=True):
        for lo in range(0, len(chunk), block):
            yield first + lo, chunk[lo : lo + block]


def _topk_dense(
    chunks: list[np.ndarray], starts: list[int], queries: np.ndarray, k: int, dead: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    n, q = sum(len(c) for c in chunks), len(queries)
    k = min(k, n)
    if k == 0:
        return [np.empty(0, np.int64)] * q, [np.empty(0, np.float32)] * q
    cand_rows, cand_scores = [], []
    for start, matrix in _blocks(chunks, starts, max(MIN_BLOCK_ROWS, SCORE_BUDGET // q)):
        # (Q, B) scores; one query is one gemv
        scores = (matrix @ queries[0])[None, :] if q == 1 else queries @ matrix.T
        lo, hi = np.searchsorted(dead, [start, start + len(matrix)])
        if hi > lo:
            scores[:, dead[lo:hi] - start] = -np.inf
        kk = min(k, len(matrix))
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
