"""The int8 copy of a table's unit rows and its scan, for search.py's exact int8 top-k path.

``Shadow`` keeps an int8 copy of one chunk of rows (symmetric per row: ``q8 = rint(x / s)``,
``s = max|x| / 127``; ``dim + 4`` bytes per row); ``quantize`` fills in only the rows added to
the chunks since its last call. ``scan`` runs the C kernel (tables/_scan.c) over pieces of the rows on a long-lived thread
pool and returns, per query, the few rows whose score bound can reach the k-th best
(``slack_per_l1`` derives the bound); search.py re-ranks them exactly. ``_scan`` is None when the
extension is not built (no C compiler at install): search.py then answers with BLAS.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from . import _scan
except ImportError:  # built without a C compiler: the BLAS path answers every query
    _scan = None

log = logging.getLogger(__name__)

MIN_THREAD_ROWS = 1 << 15  # below 32k rows per thread (12 MiB at dim 384) one thread is enough
PIECES_PER_THREAD = 8  # pieces the threads take in turn (62k rows each at 1M rows, 2 threads)
SCAN_QUERIES = 8  # queries per pass of the int8 kernel (its MAX_QUERIES)
MIN_CANDIDATES = 4096  # record buffer per query and thread, plus 4 per wanted hit (4 * k)
UNIT_ROUNDING = 2.0**-24  # float32 unit roundoff
QUANT_ERROR = 0.5 + 2.0**-12  # |x - s q8| / s; _scan.c's rounding gives <= 0.5 + 2^-15
MARGIN = 2.0**-18  # absolute slack >> the float32 rounding of a +- b and of the re-ranked scores


class Shadow:
    """int8 copy of one chunk: rows ``[:rows]`` of ``q8`` (capacity, dim) and ``scales``.

    Chunks only grow at the end (the tail chunk by appends; a reallocated tail copies its rows
    unchanged), so rows quantized once stay valid: ``quantize`` does only the new rows.
    """

    def __init__(self, dim: int) -> None:
        self.q8 = np.empty((0, dim), np.int8)
        self.scales = np.empty(0, np.float32)
        self.rows = 0

    def grow(self, chunk: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, slice]]:
        """Make room for ``chunk``'s rows; (rows, q8 rows, scales, their slice) still to quantize."""
        m, done = len(chunk), self.rows
        if m <= done:
            return []
        if m > len(self.scales):  # a growing tail: double, like the float tail
            capacity = m if done == 0 else max(m, 2 * len(self.scales))
            q8, scales = (
                np.empty((capacity, chunk.shape[1]), np.int8),
                np.empty(capacity, np.float32),
            )
            q8[:done], scales[:done] = self.q8[:done], self.scales[:done]
            self.q8, self.scales = q8, scales
        self.rows = m
        return [(chunk[done:m], self.q8[done:m], self.scales[done:m], slice(done, m))]


def quantize(
    chunks: list[np.ndarray], shadows: list[Shadow], threads: int, norms: list | None = None
) -> None:
    """Bring each shadow up to its chunk: the new rows of all chunks, cut into pieces of at least
    ``MIN_THREAD_ROWS``, quantized by ``threads`` threads (an open quantizes every chunk at once).

    ``norms``: per chunk, None (unit rows) or its rows' L2 norms (rows as written): those rows
    are quantized as they are and their scales divided by the norms, so that ``s q8`` approximates
    the unit row ``u = fl(x / n)``. The bound of ``slack_per_l1`` still holds: with ``s' = fl(s /
    n)``, ``|u_i - s' q8_i| <= s' (1/2 + 2^-15)`` plus ``2^-24 |u_i|`` (rounding u) plus ``2^-24
    127 s'`` (rounding s'), ``|u_i| <= 127 s'`` (1 + 2^-23): in all below ``s' (1/2 + 2^-14)``,
    inside QUANT_ERROR = 1/2 + 2^-12."""
    pieces = []
    for chunk, norm, shadow in zip(chunks, norms or [None] * len(chunks), shadows, strict=True):
        for rows, q8, scales, where in shadow.grow(chunk):
            step = max(MIN_THREAD_ROWS, -(-len(rows) // threads))
            part = None if norm is None else norm[where]
            pieces += [(rows[lo : lo + step], q8[lo : lo + step], scales[lo : lo + step],
                        None if part is None else part[lo : lo + step])
                       for lo in range(0, len(rows), step)]  # fmt: skip

    def run(piece: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]) -> None:
        rows, q8, scales, norm = piece
        _scan.quantize(rows, rows.shape[1], q8, scales)
        if norm is not None:
            np.divide(scales, norm, out=scales)

    workers = min(threads, len(pieces))
    if workers > 1:
        list(_pool(workers).map(run, pieces))
    else:
        for piece in pieces:
            run(piece)


def sum_rounding(dim: int) -> float:
    """``gamma_d = d u / (1 - d u)``: a float32 sum of ``dim`` products, in any order, is off by
    at most ``gamma_d`` times the sum of the products' magnitudes (u = 2^-24, Higham's bound)."""
    return dim * UNIT_ROUNDING / (1 - dim * UNIT_ROUNDING)


def slack_per_l1(dim: int) -> float:
    """``c`` such that ``|q.x - a| <= b = s ||q||_1 c + MARGIN`` for the int8 score ``a``.

    With x a float32 row, s its scale, q8 its int8 row and q the float32 query:

    - quantization: ``|x_i - s q8_i| <= s (1/2 + 2^-15)``: rint adds 1/2; computing
      ``x_i * (127 / max|x|)`` in float32 adds at most ``3 * 127 * 2^-24 < 2^-15``; clipping to
      +-127 only moves values that exceed 127 by that much. So ``|q.x - s q.q8| <= s ||q||_1
      QUANT_ERROR`` (QUANT_ERROR = 1/2 + 2^-12, generous).
    - the kernel's float32 sum of d products ``q_i q8_i`` (any order, with or without FMA) is off
      by at most ``gamma_d sum|q_i q8_i| <= gamma_d 127 ||q||_1``, ``gamma_d = d u / (1 - d u)``,
      ``u = 2^-24``; the product by s adds ``u`` relative: ``s ||q||_1 127 (gamma_d + 2u)`` in
      all, counted twice here.
    - the re-rank computes q.x in float64 (error ~ ``d 2^-53``) and rounds it to float32; MARGIN
      absorbs the float32 rounding of ``a +- b`` and keeps every row the bound excludes at least
      2^-17 below the k-th best exact score, i.e. strictly below it after rounding to float32, so
      ties by row number are decided as by a full exact scan.

    At dim 384 c = 0.506: the half-step of rint dominates; typical b at dim 384 is ~0.01.
    """
    return QUANT_ERROR + 2 * 127 * (sum_rounding(dim) + 2 * UNIT_ROUNDING)


@functools.cache
def warn_no_extension() -> None:
    log.warning(
        "llm_compression.tables._scan is not built, so searches use BLAS over float32 rows (about "
        "2x slower for single queries); reinstall with a C compiler (pip install -e .) to build it"
    )


def _pool(threads: int) -> ThreadPoolExecutor:
    """A long-lived pool (threads start once, not per query), per process: a forked child does
    not inherit its parent's threads."""
    return _pool_in(threads, os.getpid())


@functools.cache
def _pool_in(threads: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="vector-scan")


def _split(parts: list, count: int) -> list[list]:
    """(row number, q8, scales) parts cut into ``count`` runs of about equal rows."""
    total = sum(len(scales) for _, _, scales in parts)
    bounds = [total * t // count for t in range(count + 1)]
    pieces: list[list] = [[] for _ in range(count)]
    offset = 0  # position of the part's first row in the concatenation of all parts
    for start, q8, scales in parts:
        for t, piece in enumerate(pieces):
            lo = max(bounds[t], offset) - offset
            hi = min(bounds[t + 1], offset + len(scales)) - offset
            if hi > lo:
                piece.append((start + lo, q8[lo:hi], scales[lo:hi]))
        offset += len(scales)
    return pieces


def scan(parts: list, queries: np.ndarray, k: int, skip: np.ndarray, threads: int) -> list:
    """Per query (at most SCAN_QUERIES): sorted rows that may be in its top-k, or None when more
    than a record buffer's half stayed within the bound (near-duplicates of the k-th best).

    The rows are cut into PIECES_PER_THREAD pieces per thread that the threads take in turn, so
    a thread whose core is busy (e.g. by BLAS workers spinning after a matmul) takes fewer."""
    q, dim = queries.shape
    l1 = np.abs(queries).sum(axis=1, dtype=np.float64) * slack_per_l1(dim)
    slack = np.nextafter(l1.astype(np.float32), np.float32(np.inf))  # rounded up, not down
    cap = MIN_CANDIDATES + 4 * k
    total = sum(len(scales) for _, _, scales in parts)
    workers = max(1, min(threads, total // MIN_THREAD_ROWS))
    pieces = iter(_split(parts, workers * PIECES_PER_THREAD if workers > 1 else 1))
    take = threading.Lock()

    def run(_: int) -> tuple[np.ndarray, ...]:
        heaps = np.full((q, k), -np.inf, np.float32)  # per query: the k largest a - b so far
        rows, highs = np.empty((q, cap), np.int64), np.empty((q, cap), np.float32)
        counts = np.zeros(q, np.int64)
        while True:
            with take:
                piece = next(pieces, None)
            if piece is None:
                return heaps, rows, highs, counts
            for start, q8, scales in piece:
                lo, hi = np.searchsorted(skip, [start, start + len(scales)])
                _scan.scan(q8, scales, queries, dim, slack, MARGIN, start, skip[lo:hi],
                           heaps, rows, highs, counts)  # fmt: skip

    states = list(_pool(workers).map(run, range(workers))) if workers > 1 else [run(0)]
    out = []
    for j in range(q):
        if any(counts[j] < 0 for *_, counts in states):
            out.append(None)
            continue
        lows = np.concatenate([heaps[j] for heaps, *_ in states])
        tau = np.partition(lows, len(lows) - k)[len(lows) - k]  # k-th largest lower bound
        kept = [r[j, : c[j]][h[j, : c[j]] >= tau] for _, r, h, c in states]
        out.append(np.sort(np.concatenate(kept)))
    return out
