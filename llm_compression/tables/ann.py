"""Optional approximate index (usearch HNSW, cosine) over a table's live rows, saved beside it.

Built on request (``MultimodalStorage.build_index``) into ``<table>/_llmc_ann/``. Data files are
immutable, so the index tracks rows by data file: before each ANN search it drops the keys of
files the table no longer lists (rewritten by a merge or compaction) and adds the rows of files
it has not seen, then saves itself when that changed anything. Its candidates are re-scored
exactly, so scores equal the exact search's; only recall is approximate. Needs the ``ann`` extra
(``pip install llm_compression[ann]``).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InvalidEmbeddingError

ANN_DIR = "_llmc_ann"
META = "meta.json"
OVERFETCH = 2  # candidates per wanted hit, re-scored exactly
MIN_CANDIDATES = 20


@dataclass(frozen=True)
class AnnParams:
    """HNSW parameters: graph degree, the candidate lists of inserts and of searches, and the
    type the index stores vectors in. ``f16`` halves the memory and the distance work of ``f32``
    at the same recall (the candidates are re-scored exactly from the float32 rows): on 3,000
    real MiniLM embeddings, 0.104 vs 0.156 ms per query in usearch, recall@10 0.999 vs 0.995.
    A search list of 64 was enough there (0.998) but not on 100k vectors made from them
    (benchmark_storage.near_real): recall@10 0.889 at 64, 0.951 at 128, 0.970 at 192 (0.3, 0.5,
    0.8 ms on the loaded machine); the candidate count (20 to 40) did not change it."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 192
    dtype: str = "f16"


def _usearch():
    try:
        from usearch.index import Index
    except ImportError as e:
        raise InvalidEmbeddingError(
            "the ANN index needs usearch: pip install 'llm_compression[ann]' (or search exactly, "
            "the default)"
        ) from e
    return Index


class AnnIndex:
    """HNSW over the rows of the data files in ``files`` (file -> its keys)."""

    def __init__(self, dim: int, params: AnnParams) -> None:
        self.dim, self.params = dim, params
        self.index = _usearch()(ndim=dim, metric="cos", **params.__dict__)
        self.files: dict[str, tuple[int, int]] = {}  # data file -> (first key, rows)
        self.key_ids: list[str] = []  # key -> id (keys of dropped files keep their slot)

    def sync(self, snap, live_files: list[str]) -> bool:
        """Follow the table to ``snap``; returns whether anything changed."""
        live = set(live_files)
        gone = [f for f in self.files if f not in live]
        for file in gone:
            first, rows = self.files.pop(file)
            self.index.remove(np.arange(first, first + rows, dtype=np.uint64))
        new = [f for f in live_files if f not in self.files]
        ends = [*snap.starts[1:], snap.rows]
        where = {f: i for i, f in enumerate(snap.files)}
        for file in new:
            i = where[file]
            start, stop = snap.starts[i], ends[i]
            first = len(self.key_ids)
            self.key_ids.extend(snap.ids[start:stop])
            if stop > start:
                keys = np.arange(first, first + stop - start, dtype=np.uint64)
                self.index.add(keys, snap.index.rows(np.arange(start, stop)))
            self.files[file] = (first, stop - start)
        return bool(gone or new)

    def candidates(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """Per query, the ids of up to ``max(OVERFETCH * k, MIN_CANDIDATES)`` approximate nearest
        rows (fewer where the index holds fewer)."""
        count = min(len(self.index), max(OVERFETCH * k, MIN_CANDIDATES))
        if count == 0:
            return [[] for _ in queries]
        found = self.index.search(queries, count)
        keys = np.atleast_2d(found.keys)
        counts = np.atleast_1d(getattr(found, "counts", len(keys[0])))  # one query: Matches
        return [
            [self.key_ids[int(key)] for key in row[:n]] for row, n in zip(keys, counts, strict=True)
        ]

    def save(self, table_dir: Path) -> None:
        """Write the index and its key map under new names, then point ``meta.json`` at them."""
        folder = table_dir / ANN_DIR
        folder.mkdir(exist_ok=True)
        tag = uuid.uuid4().hex
        self.index.save(str(folder / f"index-{tag}.usearch"))
        pq.write_table(pa.table({"id": self.key_ids}), folder / f"ids-{tag}.parquet")
        meta = {"tag": tag, "dim": self.dim, "params": self.params.__dict__, "files": self.files}
        tmp = folder / f".{META}.{tag}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / META)
        for old in folder.iterdir():
            if tag not in old.name and old.name != META:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, table_dir: Path) -> AnnIndex | None:
        """The saved index, or None when none was built."""
        folder = table_dir / ANN_DIR
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            return None
        out = cls(meta["dim"], AnnParams(**{"dtype": "f32", **meta["params"]}))  # f32: before f16
        out.index.load(str(folder / f"index-{meta['tag']}.usearch"))
        out.key_ids = pq.read_table(folder / f"ids-{meta['tag']}.parquet")["id"].to_pylist()
        out.files = {f: tuple(v) for f, v in meta["files"].items()}
        return out
