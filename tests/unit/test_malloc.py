"""reuse_freed_memory: a model's activations reuse freed pages instead of faulting new ones in.

Counted in page faults (load-insensitive), each setting in a fresh process: glibc's allocator
state is per process and the tuning cannot be undone."""

import os
import platform
import subprocess
import sys

import pytest

from llm_compression.core import malloc

SCRIPT = """
import resource, sys
import torch
from llm_compression.core.malloc import reuse_freed_memory
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(256, 2560), torch.nn.GELU(), torch.nn.Linear(2560, 256))
x = torch.randn(4096, 256)  # 40 MiB activations: above the 32 MiB glibc always maps
with torch.inference_mode():
    net(x)  # the threads and their arenas exist first, as after load_model
    tuned = reuse_freed_memory()
    for _ in range(3):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        net(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(tuned, faults / 10)
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc's (Linux)"
)


def _faults_per_call(env_value: str) -> tuple[bool, float]:
    env = {"LLM_COMPRESSION_KEEP_FREED_MEMORY": env_value, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
        env={**os.environ, **env},
    )  # fmt: skip
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


@glibc_only
def test_kept_memory_spares_the_page_faults_of_every_call():
    tuned, kept = _faults_per_call("1")
    untuned, default = _faults_per_call("0")
    assert tuned and not untuned
    assert default > 10000  # glibc maps, zeroes and unmaps both 40 MiB activations each call
    assert kept < default / 5  # measured: 0 (2 threads) or 2048 (1 thread) against 20482


def test_switched_off_by_the_environment(monkeypatch):
    malloc.reuse_freed_memory.cache_clear()
    monkeypatch.setenv(malloc.ENV, "off")
    try:
        assert malloc.reuse_freed_memory() is False
    finally:
        malloc.reuse_freed_memory.cache_clear()


def test_load_model_tunes_the_allocator(tmp_path, monkeypatch):
    from llm_compression import loader

    calls = []
    monkeypatch.setattr(loader, "_load_torch", lambda *a: "model")
    monkeypatch.setattr(malloc, "reuse_freed_memory", lambda: calls.append(1))
    assert loader.load_model(tmp_path / "x.parquet") == "model"
    assert calls == [1]
