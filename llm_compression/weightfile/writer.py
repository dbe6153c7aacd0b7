"""``write_model``: stream tensors into a Parquet weight file, atomically (docs/format.md)."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, ConversionError
from .format import (
    CHECKSUM_ALGORITHM,
    ENCODING_BYTE_STREAM_SPLIT,
    ENCODING_PLAIN,
    FILE_PREFIX,
    FORMAT_VERSION,
    INDEX_COLUMNS,
    INDEX_KEY,
    KEPT_DTYPES,
    MAX_TENSOR_BYTES,
    META_PREFIX,
    METADATA_CHECKSUM_KEY,
    NUMPY_DTYPES,
    QUANT_INT8_SYM_CHANNEL,
    SCHEMA,
    SPLIT_DTYPES,
    STORAGE_DTYPES,
    ZSTD_LEVEL,
    checksum,
    float32_to_bfloat16_bits,
    metadata_checksum,
    package_version,
    quantize_int8_rows,
    split_bytes,
)
from .groupwise import GROUP, QUANT_INT8_GROUP, GroupQuantized, quantize_int4
from .tempfiles import _fsync, _fsync_dir, _new_temp, remove_stale_temps

logger = logging.getLogger(__name__)
# Bundled files are small and written once: level 9 packs MiniLM's tokenizer.json (466 KB) 1.9x
# (level 1: 1.5x) in ~35 ms; decoding speed does not depend on the level.
_FILE_CODEC = pa.Codec("zstd", compression_level=9)


@dataclass(frozen=True)
class _Row:
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray  # contiguous little-endian storage array, as laid out in the file
    quant_type: str | None = None
    scales: np.ndarray | None = None
    encoding: str = ENCODING_PLAIN
    zero_points: np.ndarray | None = None
    group_size: int | None = None


def _group_row(name: str, value: GroupQuantized) -> _Row:
    dtype = "int8" if value.quant_type == QUANT_INT8_GROUP else "uint4"
    return _Row(
        name, tuple(value.shape), dtype, np.ascontiguousarray(value.data), value.quant_type,
        np.ascontiguousarray(value.scales, np.float16), zero_points=None
        if value.offsets is None else np.ascontiguousarray(value.offsets, np.float16),
        group_size=GROUP,
    )  # fmt: skip


def _encode_tensor(name: str, value: Any, dtype: str, quantize: Collection[str] | None) -> _Row:
    """Cast one input tensor to its storage form (see docs/format.md, "Storage dtypes")."""
    if isinstance(value, GroupQuantized):
        return _group_row(name, value)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConversionError(
            f"tensor {name!r} ({type(value).__name__}) cannot be read as a numpy array ({e}); pass "
            "np.ndarray values (a torch bfloat16 tensor: t.float().numpy())"
        ) from e
    shape = tuple(int(d) for d in array.shape)
    kind = array.dtype.kind
    if kind in "iub":
        kept = array.dtype.name
        if kept not in KEPT_DTYPES:
            raise ConversionError(
                f"tensor {name!r} has dtype {kept}; integer tensors must be one of "
                f"{list(KEPT_DTYPES)}: cast it with .astype(np.int64) before writing"
            )
        return _Row(name, shape, kept, np.ascontiguousarray(array, NUMPY_DTYPES[kept]))
    if kind != "f":
        raise ConversionError(
            f"tensor {name!r} has dtype {array.dtype}; expected a float, integer or bool array"
        )
    if dtype == "int8" and array.ndim == 2 and (quantize is None or name in quantize):
        if not np.isfinite(array).all():
            raise ConversionError(
                f"tensor {name!r} has non-finite values and cannot be int8-quantized; "
                "fix the checkpoint or write with dtype='float16'"
            )
        q, scales = quantize_int8_rows(array)
        return _Row(name, shape, "int8", q, QUANT_INT8_SYM_CHANNEL, scales)
    if dtype == "int4" and array.ndim == 2 and (quantize is None or name in quantize):
        return _group_row(name, quantize_int4(name, array))
    stored = {"int8": "float16", "int4": "float16", "gguf": "float32"}.get(dtype, dtype)
    if stored == "bfloat16":
        values = float32_to_bfloat16_bits(array)
    else:
        values = np.ascontiguousarray(array, NUMPY_DTYPES[stored])
    if stored in SPLIT_DTYPES:
        return _Row(name, shape, stored, split_bytes(values), encoding=ENCODING_BYTE_STREAM_SPLIT)
    return _Row(name, shape, stored, values)


def _binary(array: np.ndarray | None) -> pa.Array:
    """A one-value large_binary array viewing ``array``'s bytes (no copy), or a null."""
    if array is None:
        return pa.nulls(1, pa.large_binary())
    data = pa.py_buffer(array.reshape(-1)) if array.size else pa.py_buffer(b"")
    offsets = pa.py_buffer(np.array([0, data.size], np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])


def _bytes(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")


def _row_checksum(row: _Row) -> int:
    scales = None if row.scales is None else _bytes(row.scales)
    offsets = None if row.zero_points is None else _bytes(row.zero_points)
    return checksum(_bytes(row.data), scales, offsets, algorithm=CHECKSUM_ALGORITHM)


def _row_table(row: _Row) -> pa.Table:
    if row.data.nbytes > MAX_TENSOR_BYTES:
        raise ConversionError(
            f"tensor {row.name!r} stores {row.data.nbytes / 2**30:.2f} GiB as {row.dtype}; format "
            f"version {FORMAT_VERSION} holds at most 2 GiB per tensor (a Parquet value limit): "
            "split it into several canonical tensors or pick a smaller storage dtype"
        )
    quantized = row.quant_type is not None
    columns = [
        pa.array([row.name], pa.string()),
        pa.array([list(row.shape)], pa.list_(pa.int64())),
        pa.array([row.dtype], pa.string()),
        pa.array([row.encoding], pa.string()),
        _binary(row.data),
        pa.array([int(np.prod(row.shape, dtype=np.int64))], pa.int64()),
        pa.array([row.quant_type], pa.string()),
        _binary(row.scales),
        _binary(row.zero_points),
        pa.array([(0 if row.group_size is None else 1) if quantized else None], pa.int32()),
        pa.array([row.group_size], pa.int32()),
        pa.array([_row_checksum(row)], pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _iter_tensors(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterator[tuple]:
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ConversionError(
                f"tensors must be a mapping or an iterable of (name, array) pairs; got item "
                f"{type(item).__name__}: pass dict(...) or a generator of (str, np.ndarray)"
            )
        yield item


def _encode_files(files: Mapping[str, bytes]) -> dict[str, str]:
    meta: dict[str, str] = {}
    manifest: dict[str, dict[str, Any]] = {}
    for name, content in files.items():
        if not isinstance(name, str) or not isinstance(content, bytes | bytearray | memoryview):
            raise ConversionError(
                f"files must map file names (str) to bytes; got {name!r}: "
                f"{type(content).__name__}: read the file with Path.read_bytes()"
            )
        raw = bytes(content)
        packed = _FILE_CODEC.compress(raw, asbytes=True) if raw else b""
        meta[FILE_PREFIX + name] = base64.b64encode(packed).decode("ascii")
        manifest[name] = {"size": len(raw), "crc32": zlib.crc32(raw), "encoding": "zstd+base64"}
    meta[META_PREFIX + "files"] = json.dumps(manifest, sort_keys=True)
    return meta


def index_entry(table: pa.Table) -> dict[str, Any]:
    """The footer index entry (docs/format.md) of a one-row table from ``_row_table``."""
    return {column: table.column(column)[0].as_py() for column in INDEX_COLUMNS}


def _file_metadata(config: Any, dtype: str, files, sources, index) -> dict[str, str]:
    """Key-value metadata; ``index`` is the list of ``index_entry`` of every row, in file order."""
    sources = dict(sources or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
        raise ConversionError("sources must map upstream file names (str) to sha256 hex (str)")
    meta = {
        "format_version": str(FORMAT_VERSION),
        "family": config.family,
        "config": json.dumps(_config_dict(config), sort_keys=True),
        "sources": json.dumps(sources, sort_keys=True),
        "created_by": f"llm_compression {package_version()}",
        "storage_dtype": dtype,
        "num_tensors": str(len(index)),
        "total_params": str(sum(entry["n_params"] for entry in index)),
        "checksum": CHECKSUM_ALGORITHM,
        INDEX_KEY: json.dumps(index, separators=(",", ":")),
    }
    kv = {META_PREFIX + k: v for k, v in meta.items()} | _encode_files(files or {})
    return kv | {METADATA_CHECKSUM_KEY: metadata_checksum(kv)}


def _config_dict(config: Any) -> dict[str, Any]:
    """The JSON-ready dict of a family config: a frozen dataclass that names its ``family``.

    The dataclass validated itself when it was built; a plain dict is refused, since nothing
    here could tell whether it describes a model that loads.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ConfigError(
            "config must be a family config dataclass (e.g. llm_compression.families.preset(...) or "
            f"a families.<name> config), got {type(config).__name__}"
        )
    data = dataclasses.asdict(config)
    if not isinstance(data.get("family"), str):
        raise ConfigError(f"{type(config).__name__} names no model family (a 'family' field)")
    return data


def _write_rows(writer: pq.ParquetWriter, tensors, dtype: str, quantize, progress) -> list[dict]:
    from tqdm.auto import tqdm

    total = len(tensors) if isinstance(tensors, Mapping) else None
    seen: set[str] = set()
    index: list[dict[str, Any]] = []
    bar = tqdm(total=total, unit="tensor", desc="writing", disable=not progress)
    with bar:
        for name, value in _iter_tensors(tensors):
            if name in seen:
                raise ConversionError(
                    f"duplicate tensor name {name!r}: each canonical name may appear once; "
                    "check the converter's name map for two upstream tensors mapped to it"
                )
            seen.add(name)
            table = _row_table(_encode_tensor(name, value, dtype, quantize))
            writer.write_table(table, row_group_size=1)
            index.append(index_entry(table))
            bar.update(1)
    return index


def _check_level(level: Any) -> int:
    if not isinstance(level, int) or isinstance(level, bool) or not -7 <= level <= 22:
        raise ConfigError(
            f"compression_level={level!r} is not a zstd level; pass an integer from -7 to 22"
        )
    return level


def _new_writer(tmp: str, level: int = ZSTD_LEVEL) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        tmp,
        SCHEMA,
        compression="zstd",
        compression_level={"data": level, "scales": level, "zero_points": level},
        use_dictionary=False,
        write_statistics=["name", "n_params"],
        store_schema=True,
        write_page_checksum=True,
    )


def write_model(
    path: str | os.PathLike,
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    config: Any,
    dtype: str = "float16",
    quantize: Collection[str] | None = None,
    files: Mapping[str, bytes] | None = None,
    sources: Mapping[str, str] | None = None,
    progress: bool = False,
    compression_level: int = ZSTD_LEVEL,
) -> Path:
    """Write a model's tensors, config and files to one Parquet weight file, atomically.

    Parameters
    ----------
    path : destination file; its folder is created if missing. An existing file is replaced
        only once the new one is complete and fsynced.
    tensors : mapping or iterable of (canonical name, np.ndarray), written as they come.
    config : the model's config (a family config dataclass, or a dict with ``family``), stored
        as JSON.
    dtype : storage dtype of float tensors: float32 | float16 | bfloat16 | int8. ``int8``
        quantizes the 2-D matrices named in ``quantize`` per output row and stores the rest as
        float16.
    quantize : with ``int8``, the names of the matrices that may be quantized (the converter
        passes the weights of the model's linear and embedding layers); None: every 2-D float
        tensor.
    files : bundled files, e.g. ``{"tokenizer.json": b"..."}``.
    sources : upstream file name -> sha256 hex, for provenance.
    progress : show a tqdm bar.
    compression_level : zstd level of the tensor data. Negative levels skip entropy coding:
        float data then decodes ~5x faster but is stored nearly raw (docs/format.md, "Speed").

    Returns
    -------
    Path of the written file.
    """
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not a storage dtype; choose one of {STORAGE_DTYPES}")
    _config_dict(config)
    path = Path(path)
    if path.is_dir():
        raise ConversionError(
            f"{path} is a folder; pass a file path such as {path / 'model.parquet'}"
        )
    level = _check_level(compression_level)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp, lock = _new_temp(path)
    try:
        writer = _new_writer(tmp, level)
        try:
            index = _write_rows(writer, tensors, dtype, quantize, progress)
            writer.add_key_value_metadata(_file_metadata(config, dtype, files, sources, index))
        finally:
            writer.close()
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(lock)  # releases the flock
    _fsync_dir(path.parent)
    n_params = sum(entry["n_params"] for entry in index)
    logger.info("wrote %s: %d tensors, %d params, %s", path, len(index), n_params, dtype)
    return path
