"""Exact cosine top-k over in-memory, L2-normalised float32 rows.

The index holds every row of a modality table in data-file order (rows of files a newer version
dropped included, masked at query time) as a list of contiguous chunks: a large file becomes its
own chunk as given (no copy), small ones are copied into a tail chunk that grows by doubling up to
``TAIL_BYTES``. So new files cost their rows, never a copy of the rows already held; the index is
rebuilt when more than half its rows are dead (state.py).

Two ways to the same top-k:

- ``blas``: scores of every row with numpy BLAS (``matrix @ q``) per block; the rows within
  float32 rounding of the k-th best are re-ranked exactly. Used for large query batches (a matrix
  product reads the rows once for all of them) and when the ``_scan`` extension is not built.
- ``int8``: a scan of an int8 copy of the rows (a quarter of the bytes; the scan is memory-bandwidth
  bound) that bounds every score, keeps the rows whose bound can reach the k-th best, and re-ranks
  those few exactly. The result is provably the exact top-k (see ``int8_scan.slack_per_l1``). The int8 copy is
  built at the first search and extended by later ones, never by ``append``; it costs ``dim + 4``
  bytes per row (a quarter of the float rows).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import int8_scan
from .int8_scan import MARGIN, SCAN_QUERIES

log = logging.getLogger(__name__)

SCORE_BUDGET = 1 << 25  # float32 scores per block (128 MiB): bounds memory of batched queries
MIN_BLOCK_ROWS = 1 << 16
GATHER_FRACTION = 0.25  # filters keeping fewer rows than this gather them instead of masking
TAIL_BYTES = 1 << 26  # small appends share a tail chunk of up to 64 MiB (43,690 rows at dim 384)

THREADS = os.cpu_count() or 1  # int8 scan threads
# measured at 1M x 384, 2 cores: the int8 scan is 3x faster than BLAS at 1-8 queries, 1.07x at
# 32, 0.95x at 48; 2.5x at k = 1000 and even at k = 4000
INT8_MAX_QUERIES = 32
INT8_MIN_ROWS = 1 << 12  # below 4096 rows both paths take well under a millisecond
INT8_MAX_K = 1024
LOWEST_SCORE = -2.0  # below any cosine of unit rows (>= -1 - rounding); dead rows score -inf


class Hit(NamedTuple):
    """One search result: the row's id, cosine similarity, source and metadata (a dict or None)."""

    id: str
    score: float
    source: str | None
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits of one query, best first; iterating yields ``Hit`` tuples."""

    hits: tuple[Hit, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(h.id for h in self.hits)

    @property
    def scores(self) -> np.ndarray:
        return np.array([h.score for h in self.hits], np.float32)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]


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


KERNELS = ("auto", "int8", "blas")


class VectorIndex:
    """(n, dim) float32 rows in chunks, appended in data-file order: unit rows, or rows as
    written with their L2 norms (a data file's floats mapped from the file: no copy, and no
    normalised copy; divided by their norms wherever they are read, so every path sees the
    unit rows ``normalize`` makes).

    Memory: ``4 * dim`` bytes per row (page cache for mapped rows), plus ``dim + 4`` per row (the
    int8 copy and its scales) once a search has used the int8 scan.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.chunks: list[np.ndarray] = []  # (m_i, dim) C-contiguous rows, in row order
        self.norms: list[np.ndarray | None] = []  # per chunk: its rows' norms, None: unit rows
        self.starts: list[int] = []  # row number of each chunk's first row
        self._tail: np.ndarray | None = None  # buffer whose filled part is chunks[-1], or None
        self._tail_rows = max(1024, TAIL_BYTES // (4 * dim))
        self._shadows: list[
            int8_scan.Shadow
        ] = []  # int8 copies of chunks, as of the last int8 search
        self._lock = threading.Lock()  # guards _shadows (searches may run in several threads)

    def append(self, unit: np.ndarray, norms: np.ndarray | None = None) -> None:
        """Append unit rows, or (``norms`` given: float32, none zero) rows as written; large
        arrays are kept as given (not copied), small ones are normalised into the tail."""
        m = len(unit)
        if m == 0:
            return
        if m >= self._tail_rows // 2:
            self._push(np.ascontiguousarray(unit, np.float32), norms)
            self._tail = None
            return
        if norms is not None:
            unit = np.divide(unit, norms[:, None], dtype=np.float32)
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

    def _push(self, chunk: np.ndarray, norms: np.ndarray | None = None) -> None:
        self.starts.append(self.n)
        self.chunks.append(chunk)
        self.norms.append(norms)
        self.n += len(chunk)

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        """The unit rows of sorted row numbers ``wanted``, gathered into one (len, dim) array."""
        if not self.chunks:
            return np.empty((0, self.dim), np.float32)
        return _unit_rows(self.chunks, self.norms, self.starts, wanted)

    def topk(
        self,
        queries: np.ndarray,
        k: int,
        *,
        dead: np.ndarray,
        allow: np.ndarray | None = None,
        kernel: str = "auto",
        threads: int = THREADS,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (unit rows of ``queries``): (rows, scores) of the best ``k``, best first.

        ``dead``: sorted row numbers never returned; ``allow``: sorted row numbers that may be
        returned (a filter), or None for all. ``kernel``: "int8" scans the int8 copy (built or
        extended first, ``dim + 4`` bytes per row) with ``threads`` threads, "blas" multiplies the
        float rows, "auto" picks int8 for up to ``INT8_MAX_QUERIES`` queries, ``k <= INT8_MAX_K``
        and at least ``INT8_MIN_ROWS`` rows. Both give the exact top-k, ties by row number; scores
        are float32 roundings of float64 dot products. Without the ``_scan`` extension, "blas".
        """
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        # one consistent snapshot
        chunks, norms, starts = list(self.chunks), list(self.norms), list(self.starts)
        dead = np.asarray(dead, np.int64)
        rows_of = None  # sorted row numbers of the positions searched, when a filter gathers
        if allow is not None:
            allow = np.setdiff1d(allow, dead, assume_unique=True)
            if len(allow) < GATHER_FRACTION * self.n:
                rows_of, dead = allow.astype(np.int64), _NONE
            else:
                dead = np.setdiff1d(np.arange(self.n), allow, assume_unique=True)
        hits: list = [None] * len(queries)
        if self._int8_fits(kernel, len(queries), k):
            hits = self._topk_int8((chunks, norms, starts), queries, k, dead, rows_of, threads)
        todo = [j for j, hit in enumerate(hits) if hit is None]
        if todo:
            if rows_of is not None:
                chunks, norms, starts = [_unit_rows(chunks, norms, starts, rows_of)], [None], [0]
            rows, scores = _topk_dense((chunks, norms, starts), queries[todo], k, dead)
            for j, r, s in zip(todo, rows, scores, strict=True):
                hits[j] = (r, s)
        return hits if rows_of is None else [(rows_of[r], s) for r, s in hits]

    def _int8_fits(self, kernel: str, q: int, k: int) -> bool:
        if int8_scan._scan is None and kernel != "blas":
            int8_scan.warn_no_extension()
        if int8_scan._scan is None or kernel == "blas" or min(k, self.n) == 0:
            return False
        return kernel == "int8" or (
            q <= INT8_MAX_QUERIES and k <= INT8_MAX_K and self.n >= INT8_MIN_ROWS
        )

    def _topk_int8(self, held, queries, k, dead, rows_of, threads) -> list:
        """``topk`` by the int8 scan; None for a query whose bounds left too many candidates.
        ``held``: (chunks, norms, starts) of one snapshot."""
        chunks, norms, starts = held
        q8s, scales = self._int8_copy(chunks, norms, threads)
        if rows_of is not None:
            q8s, scales = [_gather(q8s, starts, rows_of)], [_gather(scales, starts, rows_of)]
            starts = [0]
        k = min(k, sum(len(s) for s in scales))
        if k == 0:  # a filter that keeps nothing
            return [(_NONE, np.empty(0, np.float32))] * len(queries)
        parts = list(zip(starts, q8s, scales, strict=True))
        hits = []
        for lo in range(0, len(queries), SCAN_QUERIES):
            group = np.ascontiguousarray(queries[lo : lo + SCAN_QUERIES], np.float32)
            for query, cand in zip(
                group, int8_scan.scan(parts, group, k, dead, threads), strict=True
            ):
                if cand is None:
                    log.debug("int8 scan: too many rows within the bound; BLAS answers the query")
                    hits.append(None)
                    continue
                wanted = cand if rows_of is None else rows_of[cand]
                hits.append(_rerank(_unit_rows(*held, wanted), cand, query, k))
        return hits

    def _int8_copy(self, chunks, norms, threads) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(q8, scales) of every chunk, quantizing the rows added since the last call (rows as
        written are quantized as they are, with their scales divided by their norms)."""
        with self._lock:
            while len(self._shadows) < len(chunks):
                self._shadows.append(int8_scan.Shadow(self.dim))
            shadows = self._shadows[: len(chunks)]  # more if a newer snapshot synced first
            int8_scan.quantize(chunks, shadows, threads, norms)
            m = [len(c) for c in chunks]
            return (
                [sh.q8[:n] for sh, n in zip(shadows, m, strict=True)],
                [sh.scales[:n] for sh, n in zip(shadows, m, strict=True)],
            )


def describe_kernel(threads: int = THREADS) -> str:
    """Which top-k path ``kernel="auto"`` takes, for logs and benchmarks."""
    if int8_scan._scan is None:
        return "BLAS (the _scan extension is not built)"
    return (
        f"int8 scan + exact re-rank ({int8_scan._scan.kernel()} kernel, {threads} threads) for <= "
        f"{INT8_MAX_QUERIES} queries, k <= {INT8_MAX_K}, >= {INT8_MIN_ROWS:,} rows; BLAS otherwise"
    )


def _rerank(rows: np.ndarray, cand: np.ndarray, query: np.ndarray, k: int):
    """(row numbers, float32 scores) of the best ``k`` of ``cand`` by exact float64 dot product
    rounded to float32, ties by row number."""
    scores = (rows.astype(np.float64) @ query.astype(np.float64)).astype(np.float32)
    order = np.lexsort((cand, -scores))[:k]
    return cand[order], scores[order]


def _unit_rows(chunks: list[np.ndarray], norms: list[np.ndarray | None], starts: list[int],
               wanted: np.ndarray) -> np.ndarray:  # fmt: skip
    """Unit rows ``wanted`` (sorted row numbers) of chunks laid end to end from rows ``starts``;
    rows as written are divided by their norms, as ``normalize`` divides (the same floats)."""
    lows = [*np.searchsorted(wanted, starts).tolist(), len(wanted)]
    parts = []
    for chunk, norm, start, lo, hi in zip(chunks, norms, starts, lows[:-1], lows[1:], strict=True):
        if hi > lo:
            picked = wanted[lo:hi] - start
            rows = chunk[picked]
            parts.append(rows if norm is None else np.divide(rows, norm[picked, None], out=rows))
    return np.concatenate(parts) if parts else chunks[0][:0]


def _gather(arrays: list[np.ndarray], starts: list[int], wanted: np.ndarray) -> np.ndarray:
    """Rows ``wanted`` (sorted row numbers) of ``arrays`` laid end to end from rows ``starts``."""
    lows = [*np.searchsorted(wanted, starts).tolist(), len(wanted)]
    parts = [
        array[wanted[lo:hi] - start]
        for array, start, lo, hi in zip(arrays, starts, lows[:-1], lows[1:], strict=True)
        if hi > lo
    ]
    return np.concatenate(parts) if parts else arrays[0][:0]


_NONE = np.empty(0, np.int64)


def _blocks(chunks: list[np.ndarray], norms: list, starts: list[int], block: int):
    """(first row number, (rows, dim) view, their norms or None) blocks of at most ``block``
    rows, in row order."""
    for chunk, norm, first in zip(chunks, norms, starts, strict=True):
        for lo in range(0, len(chunk), block):
            yield (
                first + lo,
                chunk[lo : lo + block],
                None if norm is None else norm[lo : lo + block],
            )


def _topk_dense(
    held: tuple[list, list, list[int]], queries: np.ndarray, k: int, dead: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Exact top-k from BLAS float32 scores, re-ranked as the int8 path's candidates are.
    ``held``: (chunks, norms, starts); scores of rows as written are divided by their norms.

    Float32 rounding moves a unit row's score by at most ``e = gamma_d |q|`` (any summation
    order; taken as 2e to cover rows' norms, and for rows as written the division by the norm
    and the rounding of the unit row, each within ``2^-24 |q|``), so a row more than ``slack = 4e + MARGIN`` below
    the k-th best of any k rows seen is at least MARGIN below k exact scores: it cannot be in the
    exact top-k, ties included. Per query, ``floor`` is that k-th best minus ``slack``: a
    partition of a block's scores sets it until k candidates are known, then the candidates
    tighten it, so later blocks need only a comparison."""
    chunks, norms, starts = held
    n, (q, dim) = sum(len(c) for c in chunks), queries.shape
    k = min(k, n)
    if k == 0:
        return [np.empty(0, np.int64)] * q, [np.empty(0, np.float32)] * q
    slack = (4 * int8_scan.sum_rounding(dim) * np.linalg.norm(queries, axis=1) + MARGIN).astype(
        np.float32
    )  # (Q,)
    floor = np.full(q, LOWEST_SCORE, np.float32)  # never admits a dead row (-inf)
    found = [(_NONE, np.empty(0, np.float32))] * q  # per query: candidate rows, their scores
    for start, matrix, norm in _blocks(
        chunks, norms, starts, max(MIN_BLOCK_ROWS, SCORE_BUDGET // q)
    ):
        # (Q, B) scores; one query is one gemv
        scores = (matrix @ queries[0])[None, :] if q == 1 else queries @ matrix.T
        if norm is not None:
            scores /= norm
        lo, hi = np.searchsorted(dead, [start, start + len(matrix)])
        if hi > lo:
            scores[:, dead[lo:hi] - start] = -np.inf
        need = np.flatnonzero([len(rows) < k for rows, _ in found])
        if len(need):
            kk = min(k, len(matrix))
            kth = np.partition(scores[need], -kk, axis=1)[:, -kk]
            floor[need] = np.maximum(floor[need], kth - slack[need])
        for j in range(q):
            new = np.flatnonzero(scores[j] >= floor[j])
            found[j], floor[j] = _narrow(
                found[j], new + start, scores[j, new], k, floor[j], slack[j]
            )
    out_rows, out_scores = [], []
    for query, (rows, _) in zip(queries, found, strict=True):  # rows: sorted (blocks in order)
        best, exact = _rerank(_unit_rows(chunks, norms, starts, rows), rows, query, k)
        out_rows.append(best)
        out_scores.append(exact)
    return out_rows, out_scores


def _narrow(found, rows, scores, k, floor, slack):
    """Add candidates (rows, scores) to ``found``; with k or more, raise ``floor`` to the k-th
    best score minus ``slack`` and drop the candidates below it."""
    rows = np.concatenate([found[0], rows])
    scores = np.concatenate([found[1], scores])
    if len(scores) >= k:
        floor = max(floor, np.partition(scores, len(scores) - k)[len(scores) - k] - slack)
        keep = scores >= floor
        rows, scores = rows[keep], scores[keep]
    return (rows, scores), floor
