"""Page faults and CPU time a call with freed memory kept (decision 0014) and with glibc's defaults.

Each setting runs in its own fresh process (the allocator's state is per process), alternating,
two threads by default (as the other benchmarks; faults of two threads also contend for the
kernel's memory-map lock), on the benchmark's cached weights (``scripts/benchmark_multimodal.py`` builds them):

    PYTHONPATH=. python scripts/benchmark_malloc.py --cases clip:int8:16,clip:int8:64,minilm:float32:64 \\
        --rounds 3

Faults (``ru_minflt``) do not depend on the machine's load; CPU times do, less than wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch
from llm_compression.loader import load_model
family, dtype, batch, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(sys.argv[5]))
model = load_model(f"{folder}/{family}.parquet", dtype=dtype)
if family == "clip":
    pixels = torch.randn(batch, 3, 224, 224)
    call = lambda: model.encode_image(pixels)
elif family == "minilm":
    ids = torch.randint(1000, 2000, (batch, 32))
    call = lambda: model.encode_text(ids)
else:
    import soundfile as sf
    wave, _ = sf.read("tests/fixtures/hello_world.wav", dtype="float32")
    call = lambda: model.transcribe(wave, language="en")
with torch.inference_mode():
    call(), call()
    faults, cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, [], []
    for _ in range(4):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 4
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"faults": faults, "cpu_ms": sorted(cpu)[2] * 1e3, "wall_ms": sorted(wall)[2] * 1e3,
                  "peak_mb": peak}))
"""


def run(case: str, kept: bool, folder: Path, threads: int) -> dict:
    family, dtype, batch = case.split(":")
    env = {**os.environ, "LLM_COMPRESSION_KEEP_FREED_MEMORY": "1" if kept else "0"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, family, dtype, batch, str(folder), str(threads)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from llm_compression.weights import cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="clip:int8:16,clip:bfloat16:16,minilm:float32:64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="folder of the benchmark's weight files")
    args = p.parse_args(argv)
    folder = Path(args.work) if args.work else cache_dir() / "bench"
    print(f"load average {os.getloadavg()[0]:.1f}, {args.threads} threads")
    for case in args.cases.split(","):
        found = {True: [], False: []}
        for _ in range(args.rounds):
            for kept in (True, False):
                found[kept].append(run(case, kept, folder, args.threads))
        cells = []
        for kept, name in ((True, "kept"), (False, "glibc default")):
            faults = statistics.median(r["faults"] for r in found[kept])
            cpu = statistics.median(r["cpu_ms"] for r in found[kept])
            wall = statistics.median(r["wall_ms"] for r in found[kept])
            peak = max(r["peak_mb"] for r in found[kept])
            cells.append(
                f"{name}: {faults:,.0f} faults, {wall:.0f} ms ({cpu:.0f} CPU ms), peak {peak:.0f} MB"
            )
        print(f"{case}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
