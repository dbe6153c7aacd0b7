"""Freed activation memory stays in the process for the next call (glibc's ``mallopt``).

torch allocates every op's output afresh on the CPU (it has no caching allocator there). glibc
serves large blocks with ``mmap`` and hands them back with ``munmap`` when freed (and trims the
heap's free top), so each call of a model pays the kernel to map and zero its activation pages
again: CLIP ViT-B/32 at batch 16 in int8 took 25,000-57,000 page faults a call, and ran 1.6x
slower than with the pages kept under load or with two threads faulting at once (on a quiet
machine in a fresh process the difference is within noise; docs/decisions/0014-reuse-freed-memory.md).
ONNX Runtime and CTranslate2 keep their own arenas for the same reason.

``reuse_freed_memory()`` raises glibc's mmap threshold (blocks below it come from the heap) and
its trim threshold (free memory below it stays mapped). It changes the whole process, as a
``LD_PRELOAD`` of jemalloc would: the price is that up to ``TRIM_BYTES`` of freed memory stays
resident after a large batch. ``load_model`` calls it for torch models; set
``LLM_COMPRESSION_KEEP_FREED_MEMORY=0`` to keep glibc's defaults. Elsewhere than glibc (macOS,
musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

MMAP_THRESHOLD_BYTES = 256 << 20  # blocks up to this come from the heap (a batch-64 activation)
TRIM_BYTES = 512 << 20  # free heap memory kept mapped, at most
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
ENV = "LLM_COMPRESSION_KEEP_FREED_MEMORY"


@functools.cache
def reuse_freed_memory() -> bool:
    """Tune glibc's allocator once per process; True if it was (glibc, not switched off)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(mmap_ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))


@contextlib.contextmanager
def system_memory_pool():
    """Arrow reads into malloc'ed buffers inside the block: its default pool (mimalloc) keeps
    the pages of freed read buffers resident (SmolLM2 int4: +66 MB after loading)."""
    import pyarrow

    before = pyarrow.default_memory_pool()
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    try:
        yield
    finally:
        pyarrow.set_memory_pool(before)


def release_freed_memory() -> None:
    """Hand the memory that loading freed (decoded rows, serialized ONNX graphs, Arrow's read
    buffers: its pool keeps freed pages otherwise; the tokenizer's JSON parse) back to the OS."""
    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
