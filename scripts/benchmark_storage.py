"""Benchmark MultimodalStorage (Delta Lake tables): appends, cold open and exact top-10 search.

Compares, in one run on the same data: our store, brute-force numpy over an in-memory array (the
limit: `X @ q` + argpartition, no masks, no id mapping), and LanceDB's flat (exact) search when
lancedb is importable. Prints a table with ratios (reference time / our time: > 1 means we are faster).

    python scripts/benchmark_storage.py            # 100k and 1M rows, dim 384 and 512
    python scripts/benchmark_storage.py --quick    # 20k rows, dim 384
    python scripts/benchmark_storage.py --sizes 100000x384,1000000x384
    python scripts/benchmark_storage.py --json out.json

Threads: numpy BLAS uses every core it finds (2 here), and so does our int8 scan. OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE, when set, can slow numpy's kernel; the output names the BLAS kernel in use (see
threadpoolctl) and the search kernel our store picks (int8 scan + exact re-rank, or BLAS).
"cold open + first query" is the first open after the appends: it reads every data file's ids,
maps the floats of the data files (written by our appends as one aligned page each), computes
their norms, and builds the int8 copy of the rows at the first search; "reopen + first query" is
the next open.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_compression.tables import MultimodalStorage, cache  # noqa: E402
from llm_compression.tables.search import describe_kernel  # noqa: E402

K = 10
BATCH_QUERIES = 100
APPEND_BATCH = 100_000
# OpenBLAS's idle worker threads busy-wait for ~0.1-0.2 s after a call (measured: a 1M-row int8
# search right after numpy's `X @ q` took 47-60 ms, 0.3 s later 27-30 ms), so each timed call
# waits this long first: every contender starts with the other core free. --settle 0 disables it.
SETTLE_S = 0.3
ANN = False  # --ann


def timed(*fns, repeat: int, settle: float = SETTLE_S) -> list[float]:
    """Median wall seconds per function over ``repeat`` rounds, calls interleaved (so that load
    from other processes hits every contender alike), after one warm-up call each; ``settle``
    seconds of sleep before each timed call."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times, strict=True):
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def numpy_topk(matrix: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ matrix.T if len(queries) > 1 else (matrix @ queries[0])[None, :]
    return np.argpartition(scores, -K, axis=1)[:, -K:]


def data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 262144):
        stop = min(start + 262144, n)
        out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def bench_store_and_numpy(
    root: Path, vectors: np.ndarray, queries: np.ndarray, repeat: int, settle: float
):
    """Append throughput and cold load of our store, then top-k latency of store vs numpy."""
    n = len(vectors)
    model = _weight_file(root)
    store = MultimodalStorage(root / "store")
    batches = [
        ([f"id{j}" for j in range(i, min(i + APPEND_BATCH, n))], vectors[i : i + APPEND_BATCH])
        for i in range(0, n, APPEND_BATCH)
    ]
    start, cpu = time.perf_counter(), time.process_time()
    for batch_ids, batch in batches:
        store.add(batch_ids, batch, modality="text", model_file=model)
    append_s, append_cpu = time.perf_counter() - start, time.process_time() - cpu
    del store, batches  # measure the cold reader alone
    start, cpu = time.perf_counter(), time.process_time()
    cold = MultimodalStorage(root / "store")
    cold.search(queries[0], k=K)
    load_s, load_cpu = time.perf_counter() - start, time.process_time() - cpu
    cache.flush()  # the cache of files others wrote (none here) is written in the background
    del cold
    start, cpu = time.perf_counter(), time.process_time()
    cold = MultimodalStorage(root / "store")
    cold.search(queries[0], k=K)
    reopen_s, reopen_cpu = time.perf_counter() - start, time.process_time() - cpu
    matrix, unit_q = _unit(vectors), _unit(queries)
    hits = cold.search(queries, k=K)
    expected = numpy_topk(matrix, unit_q)
    exact = all(
        {int(i[2:]) for i in h.ids} == set(e.tolist()) for h, e in zip(hits, expected, strict=True)
    )
    single = timed(
        lambda: cold.search(queries[0], k=K),
        lambda: numpy_topk(matrix, unit_q[:1]),
        repeat=repeat,
        settle=settle,
    )
    batch = timed(
        lambda: cold.search(queries, k=K),
        lambda: numpy_topk(matrix, unit_q),
        repeat=max(1, repeat // 5),
        settle=settle,
    )
    ann = bench_ann(cold, queries, matrix, unit_q, repeat, settle) if ANN else None
    ours = {
        "ann": ann,
        "append_vectors_per_s": n / append_s,
        "append_cpu_s_per_100k": append_cpu * 100_000 / n,  # all threads: load-independent
        "append_vectors_per_cpu_s": n / append_cpu,
        "cold_open_and_first_query_s": load_s,
        "cold_open_cpu_s": load_cpu,
        "reopen_and_first_query_s": reopen_s,
        "reopen_cpu_s": reopen_cpu,
        "single_ms": 1e3 * single[0],
        "batch_ms": 1e3 * batch[0],
        "exact_matches_numpy": exact,
    }
    return ours, {"single_ms": 1e3 * single[1], "batch_ms": 1e3 * batch[1]}


def bench_ann(store, queries, matrix, unit_q, repeat: int, settle: float) -> dict | None:
    """Build the HNSW index; recall@10 of ``search(ann=True)`` against the exact top-10 of numpy
    over the same rows, and the median single-query latency."""
    try:
        import usearch  # noqa: F401
    except ImportError:
        return None
    start = time.perf_counter()
    store.build_index("text")
    build_s = time.perf_counter() - start
    hits = store.search(queries, k=K, ann=True)
    exact = numpy_topk(matrix, unit_q)
    found = [
        len({int(i[2:]) for i in h.ids} & set(e.tolist())) for h, e in zip(hits, exact, strict=True)
    ]
    time.sleep(settle)
    latencies = []  # every query, ``repeat`` rounds: the p50 is over varied queries
    for _ in range(repeat):
        for query in queries:
            start = time.perf_counter()
            store.search(query, k=K, ann=True)
            latencies.append(time.perf_counter() - start)
    return {"build_s": build_s, "recall_at_10": sum(found) / (K * len(found)),
            "single_ms": 1e3 * statistics.median(latencies),
            "p90_ms": 1e3 * float(np.percentile(latencies, 90))}  # fmt: skip


def stdlib_sentences(n: int) -> list[str]:
    """``n`` distinct English sentences from the docstrings of Python's standard library (a
    corpus every machine has), in a fixed order."""
    import re
    import sysconfig

    out, seen = [], set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        for doc in re.findall(r'"""(.*?)"""', path.read_text(errors="ignore"), flags=re.S):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 30 <= len(sentence) <= 200 and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
                    if len(out) == n:
                        return out
    return out


def bench_ann_real(root: Path, minilm: Path, n: int, rows: int, repeat: int, settle: float) -> dict:
    """HNSW recall@10 and latency on real MiniLM embeddings of ``n`` stdlib sentences, and (when
    ``rows > n``) on ``rows`` vectors made from them (``near_real``); the queries are the
    embeddings of 100 further sentences."""
    from llm_compression.provider import MultimodalEmbeddingProvider

    texts = stdlib_sentences(n + BATCH_QUERIES)
    start = time.perf_counter()
    vectors = MultimodalEmbeddingProvider(text_model=minilm).encode_batch(texts, batch_size=64)
    embed_s = time.perf_counter() - start
    queries, out = vectors[n:], {"rows": n, "embed_s": embed_s}
    tables = {"real": vectors[:n]}
    if rows > n:
        tables["near_real"] = near_real(vectors[:n], rows)
    for name, table in tables.items():
        store = MultimodalStorage(root / name)
        for lo in range(0, len(table), APPEND_BATCH):
            ids = [f"id{i}" for i in range(lo, min(lo + APPEND_BATCH, len(table)))]
            store.add(ids, table[lo : lo + APPEND_BATCH], modality="text", model_file=minilm)
        unit = _unit(table)
        out[name] = {"rows": len(table),
                     **bench_ann(store, queries, unit, _unit(queries), repeat, settle)}  # fmt: skip
        del store, unit
    return out


def near_real(vectors: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` vectors like real embeddings: the given ones, then points on the segments between
    random pairs of them (``(1 - w) a + w b``, w uniform in [0, 0.4]): a table larger than the
    sentences we can embed here that keeps their clusters and their spread."""
    rng = np.random.default_rng(seed)
    extra = max(0, rows - len(vectors))
    a, b = rng.integers(0, len(vectors), (2, extra))
    w = rng.uniform(0.0, 0.4, (extra, 1)).astype(np.float32)
    return np.concatenate([vectors, (1 - w) * vectors[a] + w * vectors[b]])


def _weight_file(root: Path) -> Path:
    """A tiny weight file: the store records the model that made the vectors from one."""
    from llm_compression.families import preset
    from llm_compression.weightfile import write_model

    tensors = {"embed.token.weight": np.ones((4, 8), np.float32)}
    return write_model(root / "bench-model.parquet", tensors, config=preset("all-minilm-l6-v2"))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_lancedb(root: Path, vectors: np.ndarray, queries: np.ndarray, repeat: int) -> dict | None:
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        return None
    db = lancedb.connect(str(root / "lance"))
    dim = vectors.shape[1]
    vector = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    table = pa.table({"id": pa.array(np.arange(len(vectors))), "vector": vector})
    start = time.perf_counter()
    tbl = db.create_table("bench", table)
    create_s = time.perf_counter() - start

    def run(q):  # no index on the table: LanceDB answers with an exact (flat) scan
        return tbl.search(q).metric("cosine").limit(K).select(["id"]).to_arrow()

    return {
        "append_vectors_per_s": len(vectors) / create_s,
        "single_ms": 1e3 * timed(lambda: run(queries[0]), repeat=max(1, repeat // 4))[0],
        "batch_ms": 1e3 * timed(lambda: run(queries), repeat=1)[0],  # one batched call
    }


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(
            f"{b['internal_api']} {b.get('architecture')} x{b['num_threads']}" for b in blas
        )
    except ImportError:
        return "unknown (threadpoolctl not installed)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k rows, dim 384 only")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--repeat", type=int, default=20, help="timed repeats of a single query")
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="seconds to sleep before each timed call, so BLAS workers stop spinning "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--sizes",
        default="100000x384,1000000x384,100000x512,1000000x512",
        help="comma-separated ROWSxDIM tables to measure, or '' for none (default: %(default)s)",
    )
    parser.add_argument("--ann", action="store_true", help="also build the HNSW index (usearch) "
                        "and report its recall@10 against exact search and its latency")  # fmt: skip
    parser.add_argument("--ann-minilm", type=Path, help="with --ann: also measure the index on "
                        "real embeddings, made by this MiniLM weight file")  # fmt: skip
    parser.add_argument("--ann-texts", type=int, default=3000,
                        help="sentences embedded for --ann-minilm (default: %(default)s)")  # fmt: skip
    parser.add_argument("--ann-rows", type=int, default=0,
                        help="with --ann-minilm: also measure a table of this many vectors made "
                        "from the embedded sentences (see near_real)")  # fmt: skip
    args = parser.parse_args()
    global ANN
    ANN = args.ann
    logging.basicConfig(level=logging.WARNING)
    sizes = [(20_000, 384)] if args.quick else _parse_sizes(args.sizes)
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    load = os.getloadavg()[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, BLAS: {blas_info()}, "
          f"env {env}, load average {load:.1f}")  # fmt: skip
    print(f"search kernel: {describe_kernel()}; {args.settle} s pause before each timed call")
    results = []
    for n, dim in sizes:
        root = Path(tempfile.mkdtemp(prefix="bench_storage_"))
        try:
            vectors = data(n, dim)
            queries = data(BATCH_QUERIES, dim, seed=1)
            ours, brute = bench_store_and_numpy(root, vectors, queries, args.repeat, args.settle)
            lance = bench_lancedb(root, vectors, queries, args.repeat)
            row = {"rows": n, "dim": dim, "store": ours, "numpy": brute, "lancedb": lance,
                   "load_average": os.getloadavg()[0]}  # fmt: skip
            results.append(row)
            _print_row(row)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    real = None
    if args.ann and args.ann_minilm:
        root = Path(tempfile.mkdtemp(prefix="bench_storage_"))
        try:
            real = bench_ann_real(root, args.ann_minilm, args.ann_texts, args.ann_rows,
                                  args.repeat, args.settle)  # fmt: skip
        finally:
            shutil.rmtree(root, ignore_errors=True)
        for name, label in (("real", "real MiniLM embeddings (stdlib docstring sentences)"),
                            ("near_real", "vectors made from them (near_real)")):  # fmt: skip
            if name in real:
                r = real[name]
                print(f"\nHNSW on {r['rows']:,} {label}: recall@10 {r['recall_at_10']:.3f}, "
                      f"1 query p50 {r['single_ms']:.2f} ms, built in {r['build_s']:.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "blas": blas_info(), "env": env,
                                         "search_kernel": describe_kernel(), "settle_s": args.settle, "ann_real": real,
                                         "load_average_end": os.getloadavg()[0],
                                         "results": results}, indent=2))  # fmt: skip
    return 0


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    if not text:  # --sizes "": only the ANN measurements on real embeddings
        return []
    try:
        return [(int(r), int(d)) for r, d in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise SystemExit(
            f"--sizes {text!r}: expected ROWSxDIM[,ROWSxDIM...], e.g. 100000x384"
        ) from None


def _print_row(row: dict) -> None:
    s, npy, lance = row["store"], row["numpy"], row["lancedb"]
    print(f"\n{row['rows']:,} x {row['dim']}: append {s['append_vectors_per_s']:,.0f} vectors/s "
          f"({s['append_vectors_per_cpu_s']:,.0f} per CPU-second, all threads), "
          f"cold open + first query {s['cold_open_and_first_query_s']:.2f} s "
          f"({s['cold_open_cpu_s']:.2f} CPU s), reopen + first query "
          f"{s['reopen_and_first_query_s']:.2f} s ({s['reopen_cpu_s']:.2f} CPU s), "
          f"results exact vs numpy: {s['exact_matches_numpy']}, "
          f"load average {row['load_average']:.1f}")  # fmt: skip
    print(f"  {'top-10':<22}{'store':>10}{'numpy':>10}{'ratio':>8}{'lancedb':>10}{'ratio':>8}")
    for key, label in (("single_ms", "1 query (ms)"), ("batch_ms", "100 queries (ms)")):
        lance_ms = f"{lance[key]:>10.1f}{lance[key] / s[key]:>8.2f}" if lance else f"{'absent':>10}"
        print(f"  {label:<22}{s[key]:>10.1f}{npy[key]:>10.1f}{npy[key] / s[key]:>8.2f}{lance_ms}")
    if s.get("ann"):
        a = s["ann"]
        print(f"  HNSW (usearch): built in {a['build_s']:.1f} s, recall@10 {a['recall_at_10']:.3f}, "
              f"1 query p50 {a['single_ms']:.2f} ms")  # fmt: skip
    if lance:
        print(f"  lancedb table creation {lance['append_vectors_per_s']:,.0f} vectors/s")


if __name__ == "__main__":
    sys.exit(main())
