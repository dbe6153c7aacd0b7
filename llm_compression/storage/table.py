"""Fragments: the Parquet schema of an embedding table, batch validation, durable writes and reads.

Every fragment is one immutable Parquet file holding rows of one modality, made by one model::

    id string, modality string, vector fixed_size_list<float32, dim>, model string,
    source string (nullable), created_at timestamp[us, UTC], metadata string (JSON, nullable)

The schema metadata key ``llm_compression.embeddings`` records modality, model, dim and dtype.
Every column is zstd-compressed except ``vector``: float32 embeddings are nearly incompressible
(zstd shrank them to 0.93x of raw at ~35% of the write time), so it is stored plain. Fragments are
written by ``parquet_writer`` (~4x less CPU than ``pq.write_table`` and a checksum read-back) and
read with pyarrow; files written by ``pq.write_table`` before it read the same.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InvalidEmbeddingError, SchemaMismatchError, StoreCorruptError
from . import parquet_writer
from .manifest import DATA_DIR, FragmentInfo, crash_point, fsync_dir, tmp_path

SCHEMA_KEY = b"llm_compression.embeddings"
ROW_GROUP_ROWS = 65536  # `get` decodes only the row groups holding the asked ids
# Parquet encodes a list column level by level on one thread (~0.25 CPU s per 100k x 384): a batch
# is written as several fragments at once, one per core, each of at most PARALLEL_ROWS rows, and
# split across the cores only when every part gets at least SPLIT_ROWS rows.
PARALLEL_ROWS = 131072
SPLIT_ROWS = 32768
WORKERS = max(1, min(4, os.cpu_count() or 1))
MODALITIES = ("text", "image", "audio", "video", "clip")  # clip: CLIP's joint text-image space
COLUMNS = ("id", "modality", "vector", "model", "source", "created_at", "metadata")
COMPRESSION = {name: "none" if name == "vector" else "zstd" for name in COLUMNS}
STATISTICS = ("id", "created_at")  # min/max per row group, for readers' filter pushdown


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise SchemaMismatchError(
            f"unknown modality {modality!r}; expected one of {list(MODALITIES)} "
            "(use 'clip' for vectors in CLIP's joint text-image space)"
        )
    return modality


def fragment_schema(modality: str, model: str, dim: int) -> pa.Schema:
    meta = {"format_version": 1, "modality": modality, "model": model, "dim": dim}
    meta["dtype"] = "float32"
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("metadata", pa.string()),
        ],
        metadata={SCHEMA_KEY: json.dumps(meta).encode()},
    )


@dataclass(frozen=True)
class Batch:
    """A batch whose types and shapes are checked: ids, float32 (n, dim) vectors, optional sources
    and JSON metadata (as Arrow string arrays). ``check_unique`` and ``check_norms`` finish the
    checks while the fragments are written (a batch that fails them is never committed)."""

    ids: list[str]
    id_array: pa.Array
    vectors: np.ndarray  # C-contiguous float32: the caller's array itself when it already was
    sources: pa.Array
    metadata: pa.Array


def validate_batch(
    ids: Sequence[str], vectors: Any, sources: Sequence | None, metadata: Sequence | None
) -> Batch:
    """Check the types and shapes of a batch for `add`/`upsert` (no pass over the vectors);
    raise a typed error naming the first bad row."""
    if isinstance(ids, str) or not isinstance(ids, Sequence | np.ndarray):
        raise InvalidEmbeddingError(f"ids must be a sequence of strings, got {type(ids).__name__}")
    ids = list(ids)
    if not ids:
        raise InvalidEmbeddingError("empty batch: pass at least one id and vector")
    try:  # arrow checks types and counts in C: no per-id Python work on the happy path
        arr = pa.array(ids, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        arr = None
    if arr is None or arr.null_count or pc.min(pc.utf8_length(arr)).as_py() == 0:
        bad = next(i for i in ids if not isinstance(i, str) or not i)
        raise InvalidEmbeddingError(
            f"ids must be non-empty strings, got {bad!r}; convert ids with str() first"
        )
    vectors = _as_matrix(vectors, len(ids))
    sources = _column("sources", sources, len(ids), _source)
    metadata = _column("metadata", metadata, len(ids), _json)
    return Batch(ids, arr, vectors, sources, metadata)


def check_unique(batch: Batch) -> None:
    """Raise when an id appears twice in the batch (hashed by Arrow without the GIL)."""
    if len(pc.unique(batch.id_array)) != len(batch.ids):  # 2.5x faster than pc.count_distinct
        seen: set[str] = set()
        dups = sorted({i for i in batch.ids if i in seen or seen.add(i)})
        raise InvalidEmbeddingError(
            f"duplicate ids within one batch: {dups[:5]}; each id may appear once per add"
        )


def _as_matrix(vectors: Any, n: int) -> np.ndarray:
    arr = np.asarray(vectors)
    if arr.dtype.kind != "f":
        raise SchemaMismatchError(
            f"vectors must be floating point, got dtype {arr.dtype}; "
            "cast with .astype(np.float32) if the values are really embeddings"
        )
    if arr.ndim == 1 and n == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0:
        raise InvalidEmbeddingError(
            f"vectors must have shape ({n}, dim) for {n} ids, got {arr.shape}"
        )
    with np.errstate(over="ignore"):  # no copy when it is float32 and C-contiguous already
        return np.ascontiguousarray(arr, dtype=np.float32)


def check_norms(squares: np.ndarray) -> None:
    """Raise for rows whose squared norm (``np.einsum("ij,ij->i", v, v)``: NaN and inf propagate,
    zeros stay 0) shows NaN/inf values or an all-zero vector."""
    finite = np.isfinite(squares)
    if not finite.all():
        rows = np.flatnonzero(~finite)[:5].tolist()
        raise InvalidEmbeddingError(
            f"vectors at rows {rows} contain NaN or inf (or values too large for float32 "
            "norms, above ~1e19); drop or recompute those embeddings"
        )
    if not squares.all():
        rows = np.flatnonzero(squares == 0)[:5].tolist()
        raise InvalidEmbeddingError(
            f"vectors at rows {rows} are all zeros (or too small to normalise in float32): "
            "cosine similarity is undefined for them"
        )


def _source(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a dict, got {type(value).__name__}")
    return json.dumps(value, sort_keys=True)


def _column(name: str, values: Sequence | None, n: int, convert) -> pa.Array:
    if values is None:
        return pa.nulls(n, pa.string())
    values = list(values)
    if len(values) != n:
        raise InvalidEmbeddingError(
            f"{name} has {len(values)} entries for {n} ids; pass one per id"
        )
    try:
        return pa.array([convert(v) for v in values], pa.string())
    except (TypeError, ValueError) as e:
        raise InvalidEmbeddingError(
            f"{name} entries must be {'str/PathLike' if name == 'sources' else 'JSON dicts'} "
            f"or None: {e}"
        ) from e


def batch_table(batch: Batch, *, modality: str, model: str) -> pa.Table:
    """The batch as a fragment table; the vector column wraps the numpy buffer (no copy)."""
    n, dim = batch.vectors.shape
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    vector = pa.FixedSizeListArray.from_arrays(pa.array(batch.vectors.reshape(-1)), dim)
    columns = [
        batch.id_array,
        pa.repeat(pa.scalar(modality, pa.string()), n),
        vector,
        pa.repeat(pa.scalar(model, pa.string()), n),
        batch.sources,
        pa.repeat(now, n),
        batch.metadata,
    ]
    return pa.Table.from_arrays(columns, schema=fragment_schema(modality, model, dim))


def fragment_sizes(rows: int) -> list[int]:
    """Rows per fragment for a batch: at most PARALLEL_ROWS each, one per core when big enough."""
    parts = max(-(-rows // PARALLEL_ROWS), min(WORKERS, rows // SPLIT_ROWS), 1)
    base, extra = divmod(rows, parts)
    return [base + (i < extra) for i in range(parts)]


def write_fragments(
    root: Path,
    table: pa.Table,
    modality: str,
    seq: int,
    *,
    then: Callable[[int, int], Any] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[list[FragmentInfo], list[Any]]:
    """``write_fragment`` for the parts given by ``fragment_sizes``, in parallel threads.

    ``then(start, stop)`` runs in each part's thread on the part's row range, while the disk
    writes its fragment (so that other work on the rows also uses every core); ``meanwhile()``
    runs in the calling thread. If anything raises, every fragment written is removed and the
    first error raised. Returns the fragments and the results of ``then``.
    """
    bounds = np.cumsum([0, *fragment_sizes(table.num_rows)]).tolist()

    def part(start: int, stop: int) -> tuple[FragmentInfo, Any]:
        rows = table.slice(start, stop - start)
        return write_fragment(root, rows, modality, seq, then=then and (lambda: then(start, stop)))

    pool = ThreadPoolExecutor(min(WORKERS, len(bounds) - 1))
    futures = [pool.submit(part, a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    errors: list[BaseException] = []
    try:
        if meanwhile:
            meanwhile()
    except BaseException as e:
        errors.append(e)
    finally:
        pool.shutdown(wait=True)
    done = [f.result() for f in futures if f.exception() is None]
    errors += [f.exception() for f in futures if f.exception() is not None]
    if errors:
        for frag, _ in done:
            (root / frag.file).unlink(missing_ok=True)
        raise errors[0]
    return [frag for frag, _ in done], [result for _, result in done]


def write_fragment(
    root: Path, table: pa.Table, modality: str, seq: int, *, then: Callable[[], Any] | None = None
) -> tuple[FragmentInfo, Any]:
    """Write ``table`` aside, fsync, rename into ``data/<modality>/``; return its manifest entry
    and what ``then()`` returned.

    ``parquet_writer`` writes the file straight to ``tmp/`` and returns its crc32, combined from
    the page checksums as the pages are written (the file is not read back). ``then()`` runs after
    the pages are handed to the kernel and before the fsync, so the disk writes them meanwhile.
    """
    rel = f"{DATA_DIR}/{modality}/{seq:08d}-{uuid.uuid4().hex[:12]}.parquet"
    final = root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(root, ".parquet")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            crc, size = parquet_writer.write_table(
                table,
                fd,
                row_group_rows=ROW_GROUP_ROWS,
                compression=COMPRESSION,
                statistics=STATISTICS,
            )
            result = then() if then else None
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point("fragment_tmp")
    os.rename(tmp, final)
    crash_point("fragment_renamed")
    fsync_dir(final.parent)
    return FragmentInfo(rel, table.num_rows, size, f"crc32:{crc:08x}"), result


class FragmentMissingError(StoreCorruptError):
    """A fragment named by the manifest is gone (a compaction may have just replaced it)."""


def _corrupt(root: Path, info: FragmentInfo, what: str) -> StoreCorruptError:
    return StoreCorruptError(
        f"fragment {info.file} of store {root} is damaged: {what}; run "
        f"`llm-compression storage verify {root}`, then restore the file from a backup or drop it "
        f"with `llm-compression storage repair --drop-corrupt {root}`"
    )


def open_fragment(root: Path, info: FragmentInfo, *, model: str, dim: int) -> pq.ParquetFile:
    """Open a fragment and check its size, schema and row count against the manifest."""
    path = root / info.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FragmentMissingError(f"fragment {info.file} of store {root} is missing") from None
    if size != info.bytes:
        raise _corrupt(root, info, f"size {size} bytes, the manifest records {info.bytes}")
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        meta = json.loads(pf.schema_arrow.metadata[SCHEMA_KEY])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as e:
        raise _corrupt(root, info, f"not a readable fragment ({e})") from e
    if (meta.get("model"), meta.get("dim")) != (model, dim) or pf.metadata.num_rows != info.rows:
        raise _corrupt(
            root,
            info,
            f"model/dim/rows {meta.get('model')!r}/{meta.get('dim')}/{pf.metadata.num_rows}, "
            f"the manifest records {model!r}/{dim}/{info.rows}",
        )
    return pf


def read_fragment(
    root: Path, info: FragmentInfo, *, model: str, dim: int, columns: Sequence[str] | None = None
) -> pa.Table:
    """All rows of a fragment (deleted ones included), with a typed error if it is damaged."""
    pf = open_fragment(root, info, model=model, dim=dim)
    columns = list(columns) if columns else None
    groups = pf.metadata.num_row_groups
    try:
        if groups == 1 or WORKERS == 1:
            return pf.read(columns=columns)
        with ThreadPoolExecutor(min(WORKERS, groups)) as pool:
            parts = pool.map(lambda g: _read_group(root / info.file, g, columns), range(groups))
            return pa.concat_tables(list(parts))
    except (OSError, pa.ArrowException) as e:
        raise _corrupt(root, info, f"decoding failed ({e})") from e


def read_live(root: Path, info: FragmentInfo, *, model: str, dim: int) -> pa.Table:
    """The rows of a fragment that are not deleted, all columns."""
    table = read_fragment(root, info, model=model, dim=dim)
    if not info.deleted:
        return table
    keep = np.ones(info.rows, bool)
    keep[list(info.deleted)] = False
    return table.filter(pa.array(keep))


def read_rows(root: Path, info: FragmentInfo, model: str, dim: int, wanted: list[int]) -> pa.Table:
    """Rows ``wanted`` (sorted positions) of a fragment, decoding only the row groups holding them."""
    pf = open_fragment(root, info, model=model, dim=dim)
    meta = pf.metadata
    bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    group_of = np.searchsorted(bounds, wanted, side="right") - 1
    groups = np.unique(group_of)
    read_starts = np.concatenate([[0], np.cumsum(bounds[groups + 1] - bounds[groups])[:-1]])
    pos = read_starts[np.searchsorted(groups, group_of)] + np.asarray(wanted) - bounds[group_of]
    try:
        table = pf.read_row_groups(groups.tolist())
    except (OSError, pa.ArrowException) as e:
        raise _corrupt(root, info, f"decoding failed ({e})") from e
    return table.take(pa.array(pos, pa.int64()))


def _read_group(path: Path, group: int, columns: list[str] | None) -> pa.Table:
    pf = pq.ParquetFile(path, page_checksum_verification=True)  # one reader per thread
    return pf.read_row_group(group, columns=columns)


def vectors_of(table: pa.Table) -> np.ndarray:
    """The ``vector`` column as a float32 (n, dim) array, read from the flat values buffer."""
    column = table.column("vector")
    dim = column.type.list_size
    parts = [c.flatten().to_numpy(zero_copy_only=True).reshape(-1, dim) for c in column.chunks]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)
