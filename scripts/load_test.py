#!/usr/bin/env python
"""Load test of ``POST /v1/embeddings``: N concurrent clients for T seconds against a real server.

Starts ``llm-compression serve --text-model F`` on 127.0.0.1 (a free port) in a subprocess, sends
the same single-sentence requests first one at a time, then from ``--clients`` threads, and
prints throughput, p50 / p99 latency, errors and the server's resident memory (start, peak, end,
and the peak of the first and last thirds of the concurrent run: flat memory means no growth).
Without ``--text-model`` it converts the packaged all-MiniLM-L6-v2 into a temporary file.

    python scripts/load_test.py --clients 16 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

SENTENCES = [f"sentence {i}: the quick brown fox number {i} jumps over {i % 7} lazy dogs"
             for i in range(512)]  # fmt: skip
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class MemoryWatch(threading.Thread):
    """Samples the server's RSS every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), rss_mb(self.pid)))
            self.stop.wait(self.every)


def start_server(model: Path, port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llm_compression", "serve", "--text-model", str(model),
           "--port", str(port), "--max-batch", str(max_batch)]  # fmt: skip
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not start in time")


def client(url: str, until: float, seed: int, out: list, errors: list) -> None:
    with httpx.Client(timeout=30) as c:
        i = seed
        while time.monotonic() < until:
            body = {"model": "minilm", "input": SENTENCES[i % len(SENTENCES)]}
            t0 = time.perf_counter()
            try:
                r = c.post(url + "/v1/embeddings", json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            (out if ok else errors).append(time.perf_counter() - t0)
            i += 97


def phase(url: str, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[float] = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(url, until, k, latencies, errors))
               for k in range(clients)]  # fmt: skip
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "throughput_rps": len(latencies) / elapsed, "p50_ms": cuts[49] * 1000,
            "p99_ms": cuts[98] * 1000}  # fmt: skip


def minilm_file(folder: Path) -> Path:
    from llm_compression.convert import convert
    from llm_compression.weights import packaged_minilm

    return Path(convert(packaged_minilm(), folder / "all-minilm-l6-v2.parquet", dtype="float32"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-model", type=Path, help="weight file (default: packaged MiniLM)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sequential-seconds", type=float, default=15.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.text_model or minilm_file(Path(tmp))
        port = free_port()
        proc = start_server(model, port, args.max_batch)
        url = f"http://127.0.0.1:{port}"
        try:
            report = run_phases(url, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["concurrent"]["errors"] == 0 else 1


def run_phases(url: str, pid: int, args) -> dict:
    phase(url, 1, 2.0)  # warm-up: the model loads on the first request
    sequential = phase(url, 1, args.sequential_seconds)
    watch = MemoryWatch(pid)
    watch.start()
    concurrent = phase(url, args.clients, args.seconds)
    watch.stop.set()
    watch.join()
    mem = [m for _, m in watch.samples]
    third = max(1, len(mem) // 3)
    return {"sequential": sequential, "concurrent": concurrent,
            "speedup": concurrent["throughput_rps"] / sequential["throughput_rps"],
            "memory_mb": {"start": mem[0], "peak": max(mem), "end": mem[-1],
                          "peak_first_third": max(mem[:third]),
                          "peak_last_third": max(mem[-third:])}}  # fmt: skip


def format_report(r: dict) -> str:
    lines = []
    for name in ("sequential", "concurrent"):
        p = r[name]
        lines.append(f"{name:>10}: {p['clients']:>2} clients  {p['throughput_rps']:7.1f} req/s  "
                     f"p50 {p['p50_ms']:6.1f} ms  p99 {p['p99_ms']:6.1f} ms  "
                     f"{p['requests']} ok  {p['errors']} errors")  # fmt: skip
    m = r["memory_mb"]
    lines.append(f"   speedup: {r['speedup']:.2f}x (concurrent / sequential throughput)")
    lines.append(f"    memory: start {m['start']:.0f} MB, peak {m['peak']:.0f} MB, end "
                 f"{m['end']:.0f} MB; peak first third {m['peak_first_third']:.0f} MB, "
                 f"last third {m['peak_last_third']:.0f} MB")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
