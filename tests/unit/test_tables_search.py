"""VectorIndex top-k: the int8 scan + exact re-rank equals the BLAS path and a float64 reference.

The reference scores every live row in float64 and rounds to float32; ranking is best score first,
ties by row number. Both paths must give exactly its ids, on random and adversarial data.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tables_helpers import weight_file

from llm_compression.tables import MultimodalStorage, int8_scan, search
from llm_compression.tables.int8_scan import slack_per_l1
from llm_compression.tables.search import VectorIndex, normalize

needs_scan = pytest.mark.skipif(int8_scan._scan is None, reason="the _scan extension is not built")
NONE = np.empty(0, np.int64)


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32))


def build(rows: np.ndarray, sizes: list[int] | None = None) -> VectorIndex:
    """An index over ``rows`` appended in batches of ``sizes`` (cycled): big and tail chunks."""
    index = VectorIndex(rows.shape[1])
    sizes = sizes or [len(rows)]
    start, i = 0, 0
    while start < len(rows):
        index.append(rows[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return index


def reference(rows, queries, k, dead=NONE, allow=None):
    live = np.setdiff1d(np.arange(len(rows)), dead)
    if allow is not None:
        live = np.intersect1d(live, allow)
    scores = (rows[live].astype(np.float64) @ queries.astype(np.float64).T).astype(np.float32)
    out = []
    for s in scores.T:
        order = np.lexsort((live, -s))[:k]
        out.append((live[order], s[order]))
    return out


def assert_same(got, want):
    assert len(got) == len(want)
    for (rows, scores), (want_rows, want_scores) in zip(got, want, strict=True):
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)


def both_paths(index, rows, queries, k, dead=NONE, allow=None, threads=2, alone=False):
    """Run int8 and BLAS; check each against the reference; return the int8 hits.

    ``alone``: the int8 path must answer every query itself (no BLAS fallback)."""
    want = reference(rows, queries, k, dead, allow)
    with pytest.MonkeyPatch.context() as mp:
        if alone:
            mp.setattr(search, "_topk_dense", None)  # calling it would raise
        int8 = index.topk(queries, k, dead=dead, allow=allow, kernel="int8", threads=threads)
    blas = index.topk(queries, k, dead=dead, allow=allow, kernel="blas")
    assert_same(int8, want)
    assert_same(blas, want)
    return int8


@pytest.fixture
def small_threads(monkeypatch):
    """Thread splits and record compactions happen at unit-test sizes."""
    monkeypatch.setattr(int8_scan, "MIN_THREAD_ROWS", 64)
    monkeypatch.setattr(int8_scan, "MIN_CANDIDATES", 32)


@needs_scan
@pytest.mark.parametrize("k", [1, 10, 100])
def test_random_rows_match_blas_and_reference(small_threads, k):
    rows = unit(5000, 48)
    index = build(rows, [1700, 300, 1, 999])
    queries = unit(11, 48, seed=1)  # two kernel passes (8 + 3 queries)
    dead = np.sort(np.random.default_rng(2).choice(5000, 700, replace=False))
    both_paths(index, rows, queries, k, alone=True)
    both_paths(index, rows, queries, k, dead=dead, alone=True)
    both_paths(index, rows, queries, k, dead=dead, threads=1, alone=True)


@needs_scan
def test_near_ties_duplicates_and_zero_rows(small_threads):
    rng = np.random.default_rng(3)
    base = unit(1, 32, seed=4)
    noise = rng.standard_normal((600, 32), dtype=np.float32)
    near = normalize(base + noise[:300] * 1e-6)  # scores equal in float32 (ties by row)
    close = normalize(base + noise[300:] * 3e-4)  # scores ~1e-7 apart: float32 rounding level
    dupes = np.repeat(unit(5, 32, seed=5), 40, axis=0)  # 5 vectors, 40 copies each
    zeros = np.zeros((50, 32), np.float32)
    rows = np.concatenate([unit(600, 32, seed=6), near, close, dupes, zeros])
    rows = rows[rng.permutation(len(rows))]
    index = build(rows, [250, 7])
    queries = np.concatenate([base, dupes[:1], unit(2, 32, seed=7)])
    for k in (1, 5, 39, 41, 200, 301, 650, len(rows), len(rows) + 5):
        both_paths(index, rows, queries, k)
    both_paths(index, rows, queries[2:], 5, alone=True)  # random queries: no tie to fall back on
    both_paths(index, rows, queries[:1], 700, alone=True)  # the buffer (4 * 700) holds the ties
    far = normalize(-base)  # the zero rows (score 0) tie among the middle ranks
    both_paths(index, rows, far, 900)


@needs_scan
def test_ties_beyond_the_record_buffer_fall_back_to_blas(small_threads, monkeypatch):
    rows = np.repeat(unit(2, 16, seed=8), 500, axis=0)  # 500 exact ties per vector
    index = build(rows, [300])
    calls, dense = [], search._topk_dense
    monkeypatch.setattr(search, "_topk_dense", lambda *args: calls.append(1) or dense(*args))
    hits = index.topk(rows[:1], 10, dead=NONE, kernel="int8")
    assert calls == [1]
    np.testing.assert_array_equal(hits[0][0], np.arange(0, 10))
    both_paths(index, rows, rows[:1], 10)


@needs_scan
@pytest.mark.parametrize("dim", [1, 3])
def test_tiny_dims_are_nearly_all_ties(small_threads, dim):
    rows = unit(700, dim, seed=9)
    index = build(rows, [100, 33])
    both_paths(index, rows, unit(4, dim, seed=10), 25)


@needs_scan
def test_dead_rows_and_filters(small_threads):
    rows = unit(3000, 24, seed=11)
    index = build(rows, [1000, 123])
    queries = rows[[5, 2500]]  # exact hits, then kill them
    rng = np.random.default_rng(12)
    dead = np.union1d([5, 2500], rng.choice(3000, 400, replace=False))
    few = np.sort(rng.choice(3000, 200, replace=False))  # < GATHER_FRACTION: gathered
    many = np.sort(rng.choice(3000, 2500, replace=False))  # masked
    for allow in (None, few, many, np.array([5, 2500]), NONE):
        both_paths(index, rows, queries, 7, allow=allow, alone=True)
        both_paths(index, rows, queries, 7, dead=dead, allow=allow, alone=True)
    everything = np.arange(3000)
    assert [len(r) for r, _ in index.topk(queries, 7, dead=everything, kernel="int8")] == [0, 0]


@needs_scan
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 400),
    dim=st.integers(1, 40),
    q=st.integers(1, 10),
    k=st.integers(1, 60),
    split=st.integers(1, 200),
    dead_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_any_shape_matches_the_reference(n, dim, q, k, split, dead_fraction, seed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_scan, "MIN_THREAD_ROWS", 16)
        mp.setattr(int8_scan, "MIN_CANDIDATES", 8)
        rng = np.random.default_rng(seed)
        rows = unit(n, dim, seed)
        rows[rng.random(n) < 0.1] = 0.0  # some zero rows
        if n > 1:
            rows[: n // 3] = rows[n // 3 : 2 * (n // 3)]  # duplicates
        dead = np.sort(rng.choice(n, int(dead_fraction * n), replace=False)).astype(np.int64)
        both_paths(build(rows, [split, 3]), rows, unit(q, dim, seed + 1), k, dead=dead)


@needs_scan
def test_without_the_extension_blas_gives_the_same_answers(monkeypatch, small_threads):
    rows = unit(2000, 40, seed=13)
    index = build(rows, [600])
    queries = unit(3, 40, seed=14)
    dead = np.arange(0, 2000, 7)
    with_ext = index.topk(queries, 15, dead=dead, kernel="int8")
    monkeypatch.setattr(int8_scan, "_scan", None)
    for kernel in ("auto", "int8"):
        assert_same(index.topk(queries, 15, dead=dead, kernel=kernel), with_ext)
    assert_same(with_ext, reference(rows, queries, 15, dead))


@needs_scan
def test_portable_and_avx2_kernels_agree(small_threads):
    kernels = ["portable"] + (["avx2"] if int8_scan._scan.kernel() == "avx2" else [])
    rows = unit(1500, 37, seed=15)  # dim not a multiple of 8 or 16: the tail loops run
    queries = unit(9, 37, seed=16)
    before = int8_scan._scan.kernel()
    results = []
    try:
        for name in kernels:
            int8_scan._scan.set_kernel(name)
            index = build(rows, [500])
            hits = both_paths(index, rows, queries, 12)
            results.append((hits, index._shadows[0].q8.copy(), approx(rows, queries[:8])[0]))
    finally:
        int8_scan._scan.set_kernel(before)
    for hits, q8, scores in results[1:]:
        assert_same(hits, results[0][0])
        np.testing.assert_array_equal(q8, results[0][1])
        np.testing.assert_allclose(scores, results[0][2], rtol=0, atol=1e-5)


def approx(rows: np.ndarray, queries: np.ndarray):
    """(Q, n) int8 scores a, exact float64 scores t, bounds b (excluding MARGIN), scales s."""
    n, dim = rows.shape
    q8, scales = np.empty((n, dim), np.int8), np.empty(n, np.float32)
    int8_scan._scan.quantize(rows, dim, q8, scales)
    a = np.empty((len(queries), n), np.float32)
    int8_scan._scan.scores(q8, scales, np.ascontiguousarray(queries), dim, a)
    t = queries.astype(np.float64) @ rows.astype(np.float64).T
    b = scales[None, :].astype(np.float64) * np.abs(queries).sum(1)[:, None] * slack_per_l1(dim)
    return a, t, b, q8, scales


@needs_scan
def test_quantized_rows_are_within_half_a_step():
    rows = np.concatenate([unit(2000, 64, seed=17), np.zeros((3, 64), np.float32)])
    rows[5] = 0.0
    rows[5, 7] = -1.0  # one-hot: scale 1/127, q8 -127
    _, _, _, q8, scales = approx(rows, unit(1, 64))
    assert np.abs(q8.astype(int)).max() <= 127 and q8[5, 7] == -127
    error = np.abs(rows - scales[:, None] * q8.astype(np.float32))
    assert np.all(error <= scales[:, None] * (0.5 + 2.0**-15))
    assert np.all(scales[-3:] == 0) and np.all(q8[-3:] == 0)


@needs_scan
def test_int8_scores_are_within_the_stated_bound_and_it_is_tight():
    dim = 384
    queries = unit(8, dim, seed=18)
    rows = unit(4000, dim, seed=19)
    a, t, b, _, _ = approx(rows, queries)
    ratio = np.abs(t - a) / b
    assert ratio.max() <= 1.0
    assert ratio.max() > 0.05  # typical rows: errors partly cancel
    # worst case: every coordinate half a step off, in the direction of the query's sign
    q = queries[0]
    step = 1.0 / 127 / 3.0  # scale s for rows whose largest entry is 1/3 (exactly 127 steps)
    grid = np.round(np.random.default_rng(20).uniform(-40, 40, (16, dim)))
    grid[:, 0] = 127  # fixes max|x| = 127 steps
    bad = ((grid + 0.499 * np.sign(q)) * step).astype(np.float32)
    bad[:, 0] = 127 * step
    a, t, b, _, _ = approx(bad, q[None, :])
    ratio = np.abs(t - a) / b
    assert ratio.max() <= 1.0 and ratio.min() > 0.9


@needs_scan
def test_int8_copy_follows_appends_without_being_built_by_them(small_threads):
    rows = unit(4000, 16, seed=21)
    index = VectorIndex(16)
    index._tail_rows = 512  # appends below 256 rows share a small, growing tail
    done = 0
    for size in (100, 50, 3000, 20, 200, 200, 30, 400):
        index.append(rows[done : done + size])
        done += size
        assert sum(sh.rows for sh in index._shadows) <= done - size or done == size
        both_paths(index, rows[:done], unit(2, 16, seed=done), 9)
        assert sum(sh.rows for sh in index._shadows) == done


@needs_scan
def test_store_search_uses_int8_with_deletes_and_filters(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "INT8_MIN_ROWS", 1)
    store = MultimodalStorage(tmp_path / "s")
    rows = unit(900, 12, seed=22)
    store.add([f"r{i}" for i in range(900)], rows, modality="text",
              model_file=weight_file(tmp_path), sources=["a" if i % 3 else "b" for i in range(900)])  # fmt: skip
    store.delete([f"r{i}" for i in range(0, 900, 5)])
    hits = store.search(rows[:4], k=6, where={"source": "b"})
    dead = np.arange(0, 900, 5)
    allow = np.arange(0, 900, 3)
    want = reference(rows, normalize(rows[:4]), 6, dead, allow)
    for hit, (rows_want, scores_want) in zip(hits, want, strict=True):
        assert list(hit.ids) == [f"r{i}" for i in rows_want]
        np.testing.assert_allclose(hit.scores, scores_want, atol=1e-6)


@needs_scan
def test_kernel_arguments_are_checked():
    scan = int8_scan._scan
    q8, scales, q = np.zeros((4, 8), np.int8), np.zeros(4, np.float32), np.ones((1, 8), np.float32)
    heaps, rows, highs, counts = (np.zeros((1, 2), np.float32), np.zeros((1, 8), np.int64),
                                  np.zeros((1, 8), np.float32), np.zeros(1, np.int64))  # fmt: skip
    slack = np.ones(1, np.float32)
    scan.scan(q8, scales, q, 8, slack, 0.0, 0, NONE, heaps, rows, highs, counts)
    with pytest.raises(ValueError, match="int8 rows of m \\* dim"):
        scan.scores(q8, scales[:3], q, 8, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="1 to 8 float32 queries"):
        scan.scores(q8, scales, np.ones((9, 8), np.float32), 8, np.zeros(36, np.float32))
    with pytest.raises(ValueError, match="cap >= 2k"):
        scan.scan(q8, scales, q, 8, slack, 0.0, 0, NONE, heaps, rows[:, :3], highs[:, :3], counts)
    with pytest.raises(ValueError, match="float32 values"):
        scan.quantize(np.zeros(31, np.float32), 8, q8, scales)
    with pytest.raises(ValueError, match="kernel"):
        search.VectorIndex(8).topk(q, 1, dead=NONE, kernel="fast")


def run_scan(values, k, skip=NONE, base=0):
    """Scan dim-1 rows q8 = values (scale 1) with query 1 and slack 0.5: a = value, b = 0.5."""
    q8 = np.array(values, np.int8)[:, None]
    heaps = np.full((1, k), -np.inf, np.float32)
    rows, highs = np.zeros((1, 4), np.int64), np.zeros((1, 4), np.float32)
    counts = np.zeros(1, np.int64)
    int8_scan._scan.scan(q8, np.ones(len(values), np.float32), np.ones((1, 1), np.float32), 1,
                      np.full(1, 0.5, np.float32), 0.0, base, skip, heaps, rows, highs, counts)  # fmt: skip
    n = max(0, int(counts[0]))
    return sorted(heaps[0].tolist()), int(counts[0]), rows[0, :n].tolist(), highs[0, :n].tolist()


@needs_scan
def test_scan_keeps_the_k_best_lower_bounds_and_the_rows_that_can_reach_them():
    # base 10; row 12's upper bound 99.5 equals the running threshold: recorded (>=); row 13
    # (98.5) is not; row 14 is skipped
    heap, count, rows, highs = run_scan([100, 101, 99, 98, 120], 2, np.array([14]), base=10)
    assert heap == [99.5, 100.5] and count == 3
    assert rows == [10, 11, 12] and highs == [100.5, 101.5, 99.5]
    # rising scores fill the 4 records; the 5th compacts them to those >= the threshold
    heap, count, rows, _ = run_scan([1, 2, 3, 4, 5, 6], 1)
    assert heap == [5.5] and count == 3 and rows == [3, 4, 5]
    # ties that a compaction cannot drop below half the buffer: overflow, the caller uses BLAS
    assert run_scan([7] * 6, 1)[1] == -1
