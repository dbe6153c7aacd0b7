"""A cache of each data file's unit vectors, so that an open of a table maps them instead of
decoding the Parquet list column and normalising again (most of a cold open's CPU).

Data files are immutable and uniquely named, so ``<table>/_llmc_cache/<file>.npy`` (float32,
``(rows, dim)``, with its xxh3-64 in ``<file>.xxh3``) stays valid while its data file exists.
An append writes the cache of each file it writes (``write``, in its writer thread); the first
search that decodes a file written by others (a merge, ``OPTIMIZE``, another engine) hands its
unit rows to one background thread that writes it (``store``). Either way: temp name, then
rename, so a reader never sees half a file; the checksum last. A missing, unreadable or
mismatched cache file is ignored, and so is a failed write (read-only media, a full disk).
Names starting with ``_`` are invisible to Delta readers and to ``vacuum``; ``prune`` removes the
cache files of data files that are gone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xxhash

from .checksums import file_hash
from .search import normalize

log = logging.getLogger(__name__)

CACHE_DIR = "_llmc_cache"
BLOCK_ROWS = 2048  # rows normalised per block by write_normalized (3 MiB at dim 384)
WRITER_NICE = 10  # the writer thread yields the cores to searches (Linux: per-thread niceness)


def _lower_priority() -> None:
    # not Linux, or not allowed: the thread writes at normal priority
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


_writer = ThreadPoolExecutor(1, thread_name_prefix="vector-cache", initializer=_lower_priority)
_pending: list[Future] = []
_lock = threading.Lock()


def load(table_dir: Path, file: str, rows: int, dim: int) -> np.ndarray | None:
    """The cached unit rows of ``file`` (memory-mapped), or None when absent or damaged (its
    xxh3-64, written beside it, is checked: ~0.15 s per GB)."""
    path = table_dir / CACHE_DIR / f"{file}.npy"
    try:
        expected = (table_dir / CACHE_DIR / f"{file}.xxh3").read_text()
        if file_hash(path) != expected:
            log.warning("vector cache %s is damaged; reading the data file instead", path)
            return None
        unit = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if unit.shape != (rows, dim) or unit.dtype != np.float32:
        return None
    return unit


def store(table_dir: Path, file: str, unit: np.ndarray) -> None:
    """Write the cache file of ``file`` in the background."""
    with _lock:
        _pending[:] = [f for f in _pending if not f.done()]
        _pending.append(_writer.submit(write, table_dir, file, unit))


def write(table_dir: Path, file: str, unit: np.ndarray) -> None:
    """Write the cache file of ``file`` now (temp name, then rename; its checksum last)."""
    unit = np.ascontiguousarray(unit, np.float32)
    _write(table_dir, file, unit.shape, [unit])


def write_normalized(table_dir: Path, file: str, vectors: np.ndarray, squares: np.ndarray) -> None:
    """Write the cache file of ``file`` from its rows as written (``squares``: their squared
    norms), normalising a block at a time: no array of every unit row is made, and each block
    is written and hashed while it is in the CPU cache. Per 50k x 384 rows, same bytes: 0.032
    CPU s against 0.125 for ``write(normalize(...))`` (median of 7, load 2.8)."""
    block = np.empty((min(BLOCK_ROWS, len(vectors)), vectors.shape[1]), np.float32)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(vectors), BLOCK_ROWS):
            rows = vectors[start : start + BLOCK_ROWS]
            yield normalize(rows, squares[start : start + BLOCK_ROWS], out=block[: len(rows)])

    _write(table_dir, file, vectors.shape, blocks())


def _write(table_dir: Path, file: str, shape: tuple[int, int], blocks: Iterable[np.ndarray]):
    """Write ``.npy`` bytes of float32 ``shape`` from ``blocks`` (row blocks, in order), hashed
    from memory rather than read back; temp name, then rename; the checksum last."""
    folder = table_dir / CACHE_DIR
    tmp = folder / f".{file}.{uuid.uuid4().hex}.tmp"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    )
    digest = xxhash.xxh3_64(header.getvalue())
    try:
        folder.mkdir(exist_ok=True)
        with open(tmp, "wb", buffering=0) as f:
            _write_all(f, header.getvalue())
            for rows in blocks:
                view = memoryview(rows).cast("B")
                digest.update(view)
                _write_all(f, view)
        os.replace(tmp, folder / f"{file}.npy")
        tmp.write_text(digest.hexdigest())  # the checksum last: no checksum, no cache
        os.replace(tmp, folder / f"{file}.xxh3")
    except OSError as e:
        log.debug("vector cache for %s not written: %s", file, e)
        tmp.unlink(missing_ok=True)


def _write_all(f, data) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def flush() -> None:
    """Wait for the cache files being written (benchmarks, tests)."""
    with _lock:
        pending = list(_pending)
    for future in pending:
        future.result()


def remove(table_dir: Path, files: list[str]) -> None:
    """Remove the cache files of ``files`` (data files of a write that was not committed)."""
    for file in files:
        for suffix in (".xxh3", ".npy"):  # the checksum first: a cache without it is ignored
            (table_dir / CACHE_DIR / f"{file}{suffix}").unlink(missing_ok=True)


def prune(table_dir: Path, live_files: set[str]) -> None:
    """Remove cache files whose data file no version lists any more (after a vacuum)."""
    folder = table_dir / CACHE_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        file = path.name.rsplit(".", 1)[0]
        if file not in live_files and not (table_dir / file).exists():
            path.unlink(missing_ok=True)
