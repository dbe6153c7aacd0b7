"""The in-memory view of one Delta table that search and id checks use, kept in step by files.

Delta data files are immutable: a version is a set of files. So the view keeps, per file it has
read, the rows it holds (ids eagerly, unit vectors at the first search), and moving to a newer
version costs reading the files added since (an append: its own files only). Rows of files the
new version no longer lists (an upsert or delete rewrote them, a compaction merged them) become
dead rows; when more than half the rows are dead the view is rebuilt from the live files.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreCorruptError
from . import cache, datafile
from .schema import vectors_of
from .search import VectorIndex, normalize

WORKERS = 2  # files decoded in parallel when several are new (pyarrow releases the GIL)
ATTRIBUTE_COLUMNS = ("id", "source", "modality", "model", "created_at", "metadata")


class FileGone(StoreCorruptError):
    """A data file read for an older version was removed (vacuum): read the newer version."""


@dataclass(frozen=True)
class Snapshot:
    """What a search needs, consistent at one version (later syncs do not change it)."""

    index: VectorIndex
    rows: int
    ids: list[str]
    dead: np.ndarray
    files: tuple[str, ...]
    starts: tuple[int, ...]


class TableState:
    """Ids and (lazily) unit vectors of every row of the data files read so far, in file order."""

    def __init__(self, root: Path, dim: int) -> None:
        self.root, self.dim = root, dim
        self.files: list[str] = []  # data files (relative paths), in the order read
        self.starts: list[int] = []  # first row number of each file
        self.ids: list[str] = []  # row number -> id
        self.dead = np.empty(0, np.int64)  # sorted row numbers of rows no version lists
        self.index = VectorIndex(dim)
        self._live_files: list[str] = []
        self._live_set: set[str] = set()
        self._vector_files = 0  # files whose vectors are in index
        self._live: dict[str, int] = {}
        self._live_rows = 0
        self._attrs: dict[str, pa.Table] = {}
        self.written: dict[str, list[str]] = {}  # ids of files this process wrote
        self._lock = threading.Lock()  # vectors are loaded by one thread at a time

    @property
    def live_files(self) -> list[str]:
        return self._live_files

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def live_count(self) -> int:
        return self.rows - len(self.dead)

    def wants_rebuild(self, live_files: list[str]) -> bool:
        dead = set(self.files) - set(live_files)
        return 2 * sum(self._size(f) for f in dead) > max(self.rows, 1)

    def _size(self, file: str) -> int:
        i = self.files.index(file)
        stop = self.starts[i + 1] if i + 1 < len(self.files) else self.rows
        return stop - self.starts[i]

    def sync(self, live_files: list[str]) -> None:
        """Read the files of ``live_files`` not read yet (ids only); mark rows of the others dead."""
        self._live_files = list(live_files)
        self._live_set = set(live_files)
        known = set(self.files)
        new = [f for f in live_files if f not in known]
        for file, ids in zip(new, _map(self._read_ids, new), strict=True):
            self.starts.append(self.rows)
            self.files.append(file)
            self.ids.extend(ids)
        live = set(live_files)
        ends = [*self.starts[1:], self.rows]
        gone = [
            np.arange(self.starts[i], ends[i]) for i, f in enumerate(self.files) if f not in live
        ]
        dead = np.concatenate(gone).astype(np.int64) if gone else np.empty(0, np.int64)
        for row in np.setdiff1d(dead, self.dead, assume_unique=True).tolist():
            if row < self._live_rows and self._live.get(self.ids[row]) == row:
                del self._live[self.ids[row]]
        self.dead = dead

    def _read_ids(self, file: str) -> list[str]:
        ids = self.written.pop(file, None)  # the writer's own rows: no need to read them back
        return ids if ids is not None else self._read(file, ["id"]).column("id").to_pylist()

    def _read(self, file: str, columns: list[str]) -> pa.Table:
        path = self.root / file
        try:
            schema = pq.read_schema(path)
            return pq.read_table(
                path, columns=[c for c in columns if c in schema.names], memory_map=True
            )
        except FileNotFoundError as e:  # vacuumed after a newer version dropped it
            raise FileGone(f"{path} is gone; a newer version of the table does not need it") from e
        except (OSError, pa.ArrowException) as e:
            raise StoreCorruptError(
                f"{path}: data file of the live version cannot be read ({e}); run "
                f"`llm-compression tables verify {self.root.parent}` then `tables repair`"
            ) from e

    def live(self) -> dict[str, int]:
        """id -> row number of its live row, for the rows read so far."""
        if self._live_rows < self.rows:
            start, stop = self._live_rows, self.rows
            keep = np.ones(stop - start, bool)
            lo, hi = np.searchsorted(self.dead, [start, stop])
            keep[self.dead[lo:hi] - start] = False
            rows = (np.flatnonzero(keep) + start).tolist()
            self._live.update(zip(itertools.compress(self.ids[start:], keep), rows, strict=True))
            self._live_rows = stop
        return self._live

    def snapshot(self) -> Snapshot:
        """Load the vectors of files read since the last search; a view that stays consistent."""
        with self._lock:
            new = self.files[self._vector_files :]
            loaded = _map(self._read_rows, new)
            for rows, norms, _ in loaded:
                self.index.append(rows, norms)
            self._vector_files = len(self.files)
            for file, (unit, _, decoded) in zip(new, loaded, strict=True):
                if decoded:  # after every file is loaded: the writer does not slow the loads
                    cache.store(self.root, file, unit)
            return Snapshot(
                self.index, self.rows, self.ids, self.dead, tuple(self.files), tuple(self.starts)
            )

    def _read_rows(self, file: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """(rows of a data file, their norms or None for unit rows, whether they were decoded).

        Files our appends wrote are mapped as they are (``datafile.vector_rows``) and their norms
        computed (0.16 CPU s per 1M x 384 rows, against ~3.2 s to decode and normalise);
        files others wrote are mapped from their cache, or decoded and normalised (and their
        cache then written in the background)."""
        rows = self._size(file)
        if file not in self._live_set:  # dead rows are never returned: no need to read them
            return np.zeros((rows, self.dim), np.float32), None, False
        mapped = datafile.vector_rows(self.root / file, rows, self.dim)
        if mapped is not None:
            norms = np.sqrt(np.einsum("ij,ij->i", mapped, mapped), dtype=np.float32)
            norms[norms == 0] = 1.0  # as normalize does (no such row is ever written)
            return mapped, norms, False
        cached = cache.load(self.root, file, rows, self.dim)
        if cached is not None:
            return cached, None, False
        column = self._read(file, ["vector"]).column("vector")
        return normalize(vectors_of(column, self.dim, str(self.root / file))), None, True

    def attributes(self, file: str) -> pa.Table:
        """The non-vector columns of one data file (cached), for search results."""
        if file not in self._attrs:
            self._attrs[file] = self._read(file, list(ATTRIBUTE_COLUMNS))
        return self._attrs[file]


def _map(fn, items: list) -> list:
    if len(items) > 1:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(fn, items))
    return [fn(item) for item in items]
