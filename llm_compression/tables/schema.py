"""The columns of an embedding table and the checks that turn a batch into an Arrow table.

Delta Lake has no fixed-size list type, so ``vector`` is ``list<float32>`` in the Delta schema
(Spark ``array<float>``, DuckDB ``FLOAT[]``, Polars ``List(Float32)``); every row of a table has
the same length, the table's ``dim`` (recorded in the table's configuration).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidEmbeddingError, SchemaMismatchError

MODALITIES = ("text", "image", "audio", "video", "clip")
# columns every table has, in order; user metadata goes in the struct column "metadata"
VECTOR_TYPE = pa.list_(pa.field("element", pa.float32(), nullable=False))
BASE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("vector", VECTOR_TYPE, nullable=False),
        pa.field("source", pa.string()),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
RESERVED = frozenset(BASE_SCHEMA.names) | {"metadata"}
MAX_ID_CHARS = 4096


@dataclass(frozen=True)
class Batch:
    """Checked rows to write: ``ids`` unique str, ``vectors`` (n, dim) float32, finite, non-zero
    (``squares``: their squared norms, which the check computed)."""

    ids: list[str]
    vectors: np.ndarray
    sources: list[str | None]
    metadata: list[dict[str, Any] | None] | None
    squares: np.ndarray

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def check_modality(modality: Any) -> str:
    if modality not in MODALITIES:
        raise SchemaMismatchError(
            f"unknown modality {modality!r}; expected one of {MODALITIES} (one table each)"
        )
    return modality


def check_ids(ids: Any) -> list[str]:
    """A list of non-empty ``str`` ids; bytes, numbers and None are refused (no silent casts).

    Arrow infers ``string`` only when every id is a ``str``, so the check runs in C.
    """
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence | np.ndarray):
        raise InvalidEmbeddingError(
            f"ids must be a list of strings, got {type(ids).__name__}; wrap a single id in a list"
        )
    ids = list(ids)
    try:
        arr = pa.array(ids, from_pandas=False) if ids else pa.array([], pa.string())
        lengths = pc.utf8_length(arr) if pa.types.is_string(arr.type) else None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        lengths = None
    if lengths is not None and arr.null_count == 0 and len(ids):
        lo, hi = pc.min_max(lengths).values()
        if lo.as_py() > 0 and hi.as_py() <= MAX_ID_CHARS:
            return ids
    elif lengths is not None and not ids:
        return ids
    bad = next(i for i in ids if not isinstance(i, str) or not i or len(i) > MAX_ID_CHARS)
    raise InvalidEmbeddingError(
        f"ids must be non-empty str of at most {MAX_ID_CHARS} characters, got {bad!r} of type "
        f"{type(bad).__name__}; decode bytes ids first (id.decode('utf-8')) and use str(i) for "
        "numbers"
    )


def check_unique(ids: list[str]) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]
        raise InvalidEmbeddingError(
            f"{len(dups)} ids appear twice in one batch (e.g. {dups[:3]}); ids must be unique"
        )


def validate_batch(ids: Any, vectors: Any, sources: Any, metadata: Any) -> Batch:
    """Check one batch of rows; raises ``InvalidEmbeddingError`` / ``SchemaMismatchError``."""
    ids = check_ids(ids)
    if not ids:
        raise InvalidEmbeddingError("the batch is empty: pass at least one id and vector")
    check_unique(ids)
    arr = np.asarray(vectors)
    if arr.dtype.kind != "f" or arr.ndim != 2 or arr.shape[0] != len(ids) or arr.shape[1] == 0:
        raise SchemaMismatchError(
            f"vectors must be a float array of shape ({len(ids)}, dim), one row per id; got "
            f"dtype {arr.dtype} with shape {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, np.float32)
    squares = np.einsum("ij,ij->i", arr, arr)
    if not np.isfinite(squares).all() or (squares == 0).any():
        bad = np.flatnonzero(~np.isfinite(squares) | (squares == 0))
        raise InvalidEmbeddingError(
            f"{len(bad)} vectors are NaN/inf or all zero (e.g. id {ids[int(bad[0])]!r}); "
            "cosine search needs finite, non-zero vectors"
        )
    sources, metadata = _per_row(sources, len(ids), "sources"), _metadata(metadata, len(ids))
    return Batch(ids, arr, sources, metadata, squares)


def _per_row(values: Any, n: int, name: str) -> list:
    if values is None:
        return [None] * n
    values = list(values) if not isinstance(values, str) else None
    if values is None or len(values) != n:
        raise InvalidEmbeddingError(f"{name} must be a list with one entry per id ({n})")
    bad = [v for v in values if v is not None and not isinstance(v, str)]
    if bad:
        raise InvalidEmbeddingError(
            f"{name} entries must be str or None, got {type(bad[0]).__name__}"
        )
    return values


def _metadata(metadata: Any, n: int) -> list | None:
    if metadata is None:
        return None
    if isinstance(metadata, dict) or len(metadata) != n:
        raise InvalidEmbeddingError(
            f"metadata must be a list with one dict (or None) per id ({n}), got "
            f"{type(metadata).__name__}"
        )
    bad = [m for m in metadata if m is not None and not isinstance(m, dict)]
    keys = {k for m in metadata if m for k in m}
    if bad or any(not isinstance(k, str) or not k for k in keys):
        raise InvalidEmbeddingError(
            "metadata entries must be dicts with non-empty str keys (or None); got "
            f"{bad[0] if bad else sorted(map(repr, keys))!r}"
        )
    return list(metadata) if keys else None


def metadata_array(metadata: list) -> pa.StructArray:
    """The ``metadata`` struct column: one typed field per key (Arrow infers the types)."""
    try:
        arr = pa.array(metadata)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidEmbeddingError(
            f"metadata values must have one type per key across the batch (str, int, float, "
            f"bool, lists or nested dicts of them): {e}"
        ) from e
    if not pa.types.is_struct(arr.type) or arr.type.num_fields == 0:
        raise InvalidEmbeddingError("metadata must be dicts with at least one key")
    if pa.types.is_null(arr.type) or any(pa.types.is_null(f.type) for f in arr.type):
        nulls = [f.name for f in arr.type if pa.types.is_null(f.type)]
        raise InvalidEmbeddingError(
            f"metadata keys {nulls} are None in every row of the batch, so their type is "
            "unknown; leave them out, or give at least one row a value"
        )
    return arr


def vector_array(vectors: np.ndarray) -> pa.ListArray:
    """(n, dim) float32 -> ``list<float32>`` without copying the floats."""
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    values = pa.array(vectors.reshape(-1))
    return pa.ListArray.from_arrays(offsets, values, type=VECTOR_TYPE)


def batch_table(batch: Batch, *, modality: str, model: str) -> pa.Table:
    """The Arrow table of one batch, columns in ``BASE_SCHEMA`` order, plus ``metadata``."""
    n = len(batch.ids)
    now = dt.datetime.now(dt.UTC)
    columns = [
        pa.array(batch.ids, pa.string()),
        vector_array(batch.vectors),
        pa.array(batch.sources, pa.string()),
        pa.repeat(pa.scalar(modality), n),
        pa.repeat(pa.scalar(model), n),
        pa.repeat(pa.scalar(now, BASE_SCHEMA.field("created_at").type), n),
    ]
    table = pa.Table.from_arrays(columns, schema=BASE_SCHEMA)
    if batch.metadata is not None:
        table = table.append_column("metadata", metadata_array(batch.metadata))
    return table


def vectors_of(column: pa.ChunkedArray, dim: int, where: str) -> np.ndarray:
    """A ``list<float32>`` column read from a data file as (n, dim) float32 (checked)."""
    parts = []
    for chunk in column.chunks:
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        if chunk.null_count or len(flat) != len(chunk) * dim:
            raise SchemaMismatchError(
                f"{where}: vector column holds nulls or rows whose length is not {dim}; rows "
                "written by another engine must have exactly the table's dim floats"
            )
        parts.append(flat.reshape(-1, dim))
    if not parts:
        return np.empty((0, dim), np.float32)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
