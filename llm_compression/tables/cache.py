"""A cache of the unit vectors of data files that others wrote, so that an open of a table maps
them instead of decoding the Parquet list column and normalising again.

Data files our appends write need none: their floats are mapped from the file itself
(``datafile.vector_rows``). Files others write (deltalake's merge, ``OPTIMIZE``, another
engine) are decoded by the first search that reads them, which hands their unit rows to one
background thread that writes ``<table>/_llmc_cache/<file>.npy`` (float32, ``(rows, dim)``, with
its xxh3-64 in ``<file>.xxh3``). Data files are immutable and uniquely named, so it stays valid
while its data file exists. Temp name, then rename, so a reader never sees half a file; the
checksum last. A missing, unreadable or
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xxhash

from .checksums import file_hash

log = logging.getLogger(__name__)

CACHE_DIR = "_llmc_cache"
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
    folder = table_dir / CACHE_DIR
    tmp = folder / f".{file}.{uuid.uuid4().hex}.tmp"
    header = io.BytesIO()  # np.save's bytes, hashed from memory rather than read back
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(unit))
    digest = xxhash.xxh3_64(header.getvalue())
    digest.update(memoryview(unit).cast("B"))
    try:
        folder.mkdir(exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(header.getvalue())
            f.write(memoryview(unit).cast("B"))
        os.replace(tmp, folder / f"{file}.npy")
        tmp.write_text(digest.hexdigest())  # the checksum last: no checksum, no cache
        os.replace(tmp, folder / f"{file}.xxh3")
    except OSError as e:
        log.debug("vector cache for %s not written: %s", file, e)
        tmp.unlink(missing_ok=True)


def flush() -> None:
    """Wait for the cache files being written (benchmarks, tests)."""
    with _lock:
        pending = list(_pending)
    for future in pending:
        future.result()


def prune(table_dir: Path, live_files: set[str]) -> None:
    """Remove cache files whose data file no version lists any more (after a vacuum)."""
    folder = table_dir / CACHE_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        file = path.name.rsplit(".", 1)[0]
        if file not in live_files and not (table_dir / file).exists():
            path.unlink(missing_ok=True)
