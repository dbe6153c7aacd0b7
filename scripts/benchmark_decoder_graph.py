"""ms per new token of a quantized causal LM on its decoder graph against one ORT session per
matrix (decision 0011), interleaved in one process: the A/B that stays readable under load.

    PYTHONPATH=. python scripts/benchmark_decoder_graph.py FILE.parquet int4 [--rounds 5]

Batch 1 (one prompt, 32 greedy tokens) and batch 8 (8 prompts together, per token); min and
median over the rounds; the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from llm_compression.families.quantized import load_quantized
from llm_compression.loader import load_model

PROMPTS = [
    "The capital of France is", "Once upon a time", "def fibonacci(n):", "The best way to learn",
    "In 1969, astronauts", "Water boils at", "My favourite recipe for soup", "The theory of relativity",
]  # fmt: skip


def ms_per_token(models: dict, rounds: int) -> dict:
    tok = next(iter(models.values())).tokenizer
    rows = [tok.encode(p) for p in PROMPTS]
    calls = {
        "b1": lambda m: len(m.generate_ids(rows[0], max_new_tokens=32)),
        "b8": lambda m: sum(map(len, m.generate_ids(rows, max_new_tokens=32))),
    }
    ms = {name: {key: [] for key in calls} for name in models}
    for m in models.values():
        calls["b1"](m)  # warm-up
    for _ in range(rounds):
        for name, m in models.items():
            for key, fn in calls.items():
                start = time.perf_counter()
                n = fn(m)
                ms[name][key].append(1000 * (time.perf_counter() - start) / n)
    return {
        name: {f"{k}_min": round(min(v), 2) for k, v in got.items()}
        | {f"{k}_median": round(statistics.median(v), 2) for k, v in got.items()}
        for name, got in ms.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("dtype", choices=["int8", "int4"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "graph": load_model(args.path, dtype=args.dtype),
        "per-matrix": load_quantized(args.path, args.dtype, graph=False),
    }
    models["per-matrix"].tokenizer = models["graph"].tokenizer
    before = os.getloadavg()[0]
    found = ms_per_token(models, args.rounds)
    print(json.dumps({"load": [before, os.getloadavg()[0]], **found}))


if __name__ == "__main__":
    main()
