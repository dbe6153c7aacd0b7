"""The in-memory view of one modality table at one manifest version, kept in step incrementally.

Fragments are immutable, so a newer manifest that only appends fragments (or adds tombstones) costs
reading the new fragments only; a manifest whose fragment list changed otherwise (a compaction) makes
the table reload.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from .manifest import FragmentInfo, TableInfo
from .search import VectorIndex, normalize
from .table import WORKERS, read_fragment

ATTRIBUTE_COLUMNS = ("id", "modality", "model", "source", "created_at", "metadata")
Preloaded = dict[str, tuple[list[str], np.ndarray]]  # fragment file -> (ids, unit vectors)


class TableState:
    """Ids, unit vectors and tombstones of every row of one table, in fragment order."""

    def __init__(self, info: TableInfo) -> None:
        self.model, self.dim = info.model, info.dim
        self.fragments: list[FragmentInfo] = []
        self.offsets: list[int] = []  # first row number of each fragment
        self.index = VectorIndex(info.dim)
        self.ids: list[str] = []  # row number -> id
        self.dead = np.empty(0, np.int64)  # sorted row numbers of deleted rows
        self._live: dict[str, int] | None = None  # id -> row number of its live row (lazy)
        self._live_rows = 0  # rows below this one are in _live (when it is not None)
        self._attrs: dict[str, pa.Table] = {}  # fragment file -> attribute columns (lazy)

    @property
    def rows(self) -> int:
        return self.index.n

    @property
    def live_count(self) -> int:
        return self.index.n - len(self.dead)

    def fits(self, info: TableInfo) -> bool:
        """Whether ``info`` only appends fragments or tombstones to what is loaded."""
        old = [f.file for f in self.fragments]
        new = [f.file for f in info.fragments[: len(old)]]
        return (info.model, info.dim) == (self.model, self.dim) and old == new

    def sync(self, root: Path, info: TableInfo, preloaded: Preloaded) -> None:
        """Load the fragments of ``info`` not loaded yet and apply its tombstones."""
        new = info.fragments[len(self.fragments) :]
        if len(new) > 1 and WORKERS > 1:  # all reads (decode + normalise) before any change
            with ThreadPoolExecutor(WORKERS) as pool:
                loaded = list(pool.map(lambda f: self._load(root, f, preloaded), new))
        else:
            loaded = [self._load(root, f, preloaded) for f in new]
        for frag, (ids, unit) in zip(new, loaded, strict=True):
            self.offsets.append(self.index.n)
            self.index.append(unit)
            self.ids.extend(ids)
            self.fragments.append(frag)
        self.fragments = list(info.fragments)
        old_dead = self.dead
        self.dead = self._dead_rows()
        if self._live is not None:  # new rows go into _live at the next live() call
            for row in np.setdiff1d(self.dead, old_dead, assume_unique=True).tolist():
                if row < self._live_rows and self._live.get(self.ids[row]) == row:
                    del self._live[self.ids[row]]

    def _load(self, root: Path, frag: FragmentInfo, preloaded: Preloaded):
        if frag.file in preloaded:
            return preloaded[frag.file]
        table = read_fragment(root, frag, model=self.model, dim=self.dim, columns=["id", "vector"])
        return table.column("id").to_pylist(), unit_rows(table.column("vector"))

    def _dead_rows(self) -> np.ndarray:
        parts = [
            np.asarray(f.deleted, np.int64) + off
            for f, off in zip(self.fragments, self.offsets, strict=True)
            if f.deleted
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def live(self) -> dict[str, int]:
        """id -> row number of its live row (an id's live row is always its last one).

        Rows appended since the last call are added here, not when they are loaded: the next
        `add` checks its ids while its fragments are being written, and pays for them then.
        """
        if self._live is None:
            self._live, self._live_rows = {}, 0
        stop = self.index.n
        start = self._live_rows
        if start < stop:
            keep = np.ones(stop - start, bool)
            lo, hi = np.searchsorted(self.dead, [start, stop])
            keep[self.dead[lo:hi] - start] = False
            rows = (np.flatnonzero(keep) + start).tolist()
            self._live.update(zip(itertools.compress(self.ids[start:], keep), rows, strict=True))
            self._live_rows = stop
        return self._live

    def locate(self, row: int) -> tuple[int, int]:
        """(fragment number, row within it) of a row number."""
        frag = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return frag, row - self.offsets[frag]

    def attributes(self, root: Path) -> pa.Table:
        """Every row's non-vector columns (deleted rows included), in row order, for filters."""
        tables = []
        for frag in self.fragments:
            if frag.file not in self._attrs:
                self._attrs[frag.file] = read_fragment(
                    root, frag, model=self.model, dim=self.dim, columns=ATTRIBUTE_COLUMNS
                )
            tables.append(self._attrs[frag.file])
        return pa.concat_tables(tables)

    def filter_rows(self, root: Path, expression) -> np.ndarray:
        """Sorted row numbers whose attributes satisfy a pyarrow compute expression."""
        attrs = self.attributes(root)
        attrs = attrs.append_column("__row", pa.array(np.arange(attrs.num_rows, dtype=np.int64)))
        return np.sort(attrs.filter(expression).column("__row").to_numpy())


def unit_rows(column: pa.ChunkedArray) -> np.ndarray:
    """A ``fixed_size_list<float32, dim>`` column as (n, dim) unit rows: each chunk's flat values
    buffer is viewed with no copy and normalised straight into the one output array."""
    dim = column.type.list_size
    out = np.empty((len(column), dim), np.float32)
    start = 0
    for chunk in column.chunks:
        flat = chunk.flatten().to_numpy(zero_copy_only=True).reshape(-1, dim)
        normalize(flat, out=out[start : start + len(flat)])
        start += len(flat)
    return out
