"""Reading weight files: validation, metadata, the tensor index and one row group at a time.

Every failure of the file itself becomes a typed error naming the file, what was wrong and the fix:
``ModelFileNotFoundError`` (missing), ``FormatError`` (not Parquet, not ours, unknown version),
``CorruptFileError`` (truncated, undecodable, checksum mismatch). No pyarrow exception escapes.
"""

from __future__ import annotations

import json
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptFileError, FormatError, InputError
from . import format as _format
from .format import (
    CHECKSUMS,
    ENCODING_BYTE_STREAM_SPLIT,
    ENCODING_PLAIN,
    ENCODINGS,
    INDEX_COLUMNS,
    INDEX_KEY,
    META_PREFIX,
    NUMPY_DTYPES,
    QUANT_INT8_SYM_CHANNEL,
    TensorInfo,
    checksum,
    join_bytes,
    quant_columns,
    quant_sizes,
)
from .groupwise import GROUP, GROUP_QUANT_TYPES, QUANT_INT8_GROUP, GroupQuantized
from .metadata import (
    ARROW_ERRORS,
    FIX_DAMAGED,
    U64,
    check_schema,
    checked_metadata,
    kv_value,
    open_parquet,
    parse_metadata,
)
from .pages import DataFrame, FileSpan, data_frame
from .stream import decode_plain, decode_split, pieces, quantizing


def _row_info(path: Path, pf: pq.ParquetFile, i: int, row: dict[str, Any]) -> TensorInfo:
    shape = tuple(row["shape"])
    bad = (
        row["dtype"] not in NUMPY_DTYPES
        or row["quant_type"] not in (None, QUANT_INT8_SYM_CHANNEL, *GROUP_QUANT_TYPES)
        or row["encoding"] not in ENCODINGS
        or any(d < 0 for d in shape)
        or math.prod(shape) != row["n_params"]
        or (row["quant_type"] in GROUP_QUANT_TYPES and not _group_ok(row, shape))
    )
    if bad:
        raise FormatError(
            f"{path}: tensor {row['name']!r} has dtype {row['dtype']!r}, encoding "
            f"{row['encoding']!r}, quant_type {row['quant_type']!r}, shape {shape}, n_params "
            f"{row['n_params']}; expected a dtype in {sorted(NUMPY_DTYPES)}, an encoding in "
            f"{list(ENCODINGS)}, quant_type None, {QUANT_INT8_SYM_CHANNEL!r} or one of "
            f"{GROUP_QUANT_TYPES} and n_params = "
            "prod(shape): the file is damaged or from a newer llm_compression"
        )
    group = pf.metadata.row_group(i)
    stored = sum(group.column(j).total_compressed_size for j in range(group.num_columns))
    return TensorInfo(
        name=row["name"], shape=shape, dtype=row["dtype"], encoding=row["encoding"],
        n_params=row["n_params"], quant_type=row["quant_type"], quant_axis=row["quant_axis"],
        group_size=row["group_size"], checksum=row["checksum"], row_group=i, stored_bytes=stored,
    )  # fmt: skip


def _group_ok(row: dict[str, Any], shape: tuple[int, ...]) -> bool:
    """A group-quantized row: 2-D, groups of GROUP inputs, the dtype of its quant_type."""
    dtype = "int8" if row["quant_type"] == QUANT_INT8_GROUP else "uint4"
    return (
        row["group_size"] == GROUP and len(shape) == 2 and shape[1] % GROUP == 0
        and row["dtype"] == dtype
    )  # fmt: skip


_NONE = type(None)
# JSON types of the index fields (docs/format.md); "shape" is a list of ints.
_INDEX_TYPES = {
    "name": str, "dtype": str, "encoding": str, "n_params": int, "checksum": int,
    "quant_type": (str, _NONE), "quant_axis": (int, _NONE), "group_size": (int, _NONE),
}  # fmt: skip


def _index_row_ok(row: Any) -> bool:
    if not isinstance(row, dict) or not set(INDEX_COLUMNS) <= set(row):
        return False
    shape = row["shape"]
    fields_ok = all(
        isinstance(row[k], t) and not isinstance(row[k], bool) for k, t in _INDEX_TYPES.items()
    )
    shape_ok = isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    )
    return fields_ok and shape_ok


def _index_rows(path: Path, pf: pq.ParquetFile) -> list[dict[str, Any]]:
    """The index entries from the footer JSON (written by every writer of format version 1)."""
    rows = kv_value(path, pf.metadata.metadata or {}, INDEX_KEY, json.loads)
    ok = isinstance(rows, list) and all(_index_row_ok(r) for r in rows)
    if not ok or len(rows) != pf.num_row_groups:
        raise CorruptFileError(
            f"{path}: the tensor index in {META_PREFIX + INDEX_KEY!r} does not list the "
            f"{pf.num_row_groups} row groups with fields {INDEX_COLUMNS} of the types of "
            f"docs/format.md; {FIX_DAMAGED}"
        )
    return rows


def _read_index(path: Path, pf: pq.ParquetFile) -> dict[str, TensorInfo]:
    rows = _index_rows(path, pf)
    index: dict[str, TensorInfo] = {}
    for i, row in enumerate(rows):
        if row["name"] in index:
            raise FormatError(
                f"{path}: tensor name {row['name']!r} appears twice (rows {index[row['name']].row_group}"
                f" and {i}); names must be unique: re-convert the model"
            )
        index[row["name"]] = _row_info(path, pf, i, row)
    return index


def read_tensor_index(path: str | Path) -> list[TensorInfo]:
    """The tensor table (name, shape, dtype, sizes, quantization) in file order, no data decoded."""
    return list(WeightFile(path).tensors.values())


def _value(path: Path, info: TensorInfo, table: pa.Table, column: str) -> pa.Buffer:
    """The bytes of the single value in ``column`` as a slice of the decoded Arrow buffer."""
    chunks = table.column(column)
    # One row per row group gives one chunk; combine_chunks would copy even a single chunk.
    array = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
    if len(array) != 1 or array.null_count:
        raise CorruptFileError(f"{path}: tensor {info.name!r} has no {column} value; {FIX_DAMAGED}")
    _, offsets, data = array.buffers()
    width = 8 if pa.types.is_large_binary(array.type) else 4
    start, end = (
        int.from_bytes(
            offsets[(array.offset + k) * width : (array.offset + k + 1) * width], "little"
        )
        for k in (0, 1)
    )
    if data is None:
        return pa.py_buffer(b"")
    if start == 0 and end == data.size:
        return data
    # A slice of a mutable buffer exported through a writable memoryview stays mutable (a plain
    # Buffer.slice is read-only), so torch.frombuffer can view it without copying.
    return pa.py_buffer(memoryview(data)[start:end])


class WeightFile:
    """An open, validated weight file: metadata, tensor index, and row-group reads.

    ``read`` may be called from several threads at once; each thread reads through its own
    Parquet reader (sharing the parsed footer), so decoding runs in parallel.

    The file is never memory-mapped unless ``memory_map`` asks for it: a mapped file that another
    process truncates kills this process with SIGBUS. Without the map, a file cut short or replaced
    since it was opened raises CorruptFileError at the next read.
    """

    def __init__(self, path: str | Path, *, memory_map: bool = False) -> None:
        self.path = Path(path)
        self._memory_map = memory_map
        # The index comes from the footer JSON; tensor data is verified by the per-row checksum.
        pf = open_parquet(self.path, memory_map=False, verify_pages=True)
        check_schema(self.path, pf.schema_arrow)
        metadata = parse_metadata(self.path, pf)
        self.tensors = _read_index(self.path, pf)
        self.metadata = checked_metadata(metadata, pf)
        self._footer = pf.metadata
        self._data_column = pf.schema_arrow.get_field_index("data")
        self._fd = os.open(self.path, os.O_RDONLY)  # read_split's positional reads
        weakref.finalize(self, os.close, self._fd)
        opened = os.fstat(self._fd)
        self._identity = (opened.st_dev, opened.st_ino)
        self._check_unchanged()
        self._local = threading.local()

    def _check_unchanged(self) -> None:
        """CorruptFileError when the file was replaced or cut short since it was opened."""
        try:
            now = os.stat(self.path)
        except OSError as e:
            raise CorruptFileError(
                f"{self.path} is gone since it was opened ({e}); open it again once it is back"
            ) from e
        if (now.st_dev, now.st_ino) != self._identity:
            raise CorruptFileError(
                f"{self.path} was replaced by another file since it was opened; open it again "
                "(a new WeightLoader or load_model) to read the new file"
            )
        size = os.fstat(self._fd).st_size
        if size < self.metadata.file_size:
            raise CorruptFileError(
                f"{self.path} was cut to {size} bytes since it was opened (it had "
                f"{self.metadata.file_size}); {FIX_DAMAGED}"
            )

    def _reader(self) -> pq.ParquetFile:
        pf = getattr(self._local, "pf", None)
        if pf is None:
            pf = pq.ParquetFile(
                self.path, metadata=self._footer, memory_map=self._memory_map, pre_buffer=False
            )
            self._local.pf = pf
        return pf

    def read(
        self, info: TensorInfo, *, verify: bool = True, raw: bool = False
    ) -> tuple[pa.Buffer, pa.Buffer | None]:
        """Decode one tensor's row group: (data bytes, float32 scale bytes or None).

        The data bytes are the tensor's little-endian elements; with ``raw`` they are the stored
        bytes, still byte-stream-split when ``info.encoding`` says so (see ``format.join_bytes``).
        Raises CorruptFileError when the row group does not decode, has the wrong size, or (with
        ``verify``) its checksum (the algorithm the file's metadata names) does not match.
        """
        data, scales, _ = self._read_row(info, verify, raw)
        return data, scales

    def read_group(self, info: TensorInfo, *, verify: bool = True) -> GroupQuantized:
        """A group-wise quantized row (``int4_group_asym`` / ``int8_group_sym``) as stored."""
        if info.quant_type not in GROUP_QUANT_TYPES:
            raise InputError(
                f"{self.path}: tensor {info.name!r} is not group-quantized ({info.quant_type}); "
                "read it with decode_tensor"
            )
        data, scales, offsets = self._read_row(info, verify, False)
        rows, cols = info.shape
        groups = (rows, cols // GROUP)
        dtype = np.int8 if info.quant_type == QUANT_INT8_GROUP else np.uint8
        width = cols if info.quant_type == QUANT_INT8_GROUP else cols // 2
        return GroupQuantized(
            info.quant_type, (rows, cols),
            np.frombuffer(data, dtype).reshape(rows, width),
            np.frombuffer(scales, np.float16).reshape(groups),
            None if offsets is None else np.frombuffer(offsets, np.float16).reshape(groups),
        )  # fmt: skip

    def _read_row(self, info: TensorInfo, verify: bool, raw: bool):
        values = self._columns(info, ["data", *quant_columns(info.quant_type)]) + [None, None]
        data, scales, offsets = values[:3]
        if verify:
            self._check(info, checksum(data, scales, offsets, algorithm=self.metadata.checksum))
        if not raw and info.encoding == ENCODING_BYTE_STREAM_SPLIT and data.size:
            data = pa.py_buffer(join_bytes(data, NUMPY_DTYPES[info.dtype].itemsize))
        return data, scales, offsets

    def _check(self, info: TensorInfo, computed: int) -> None:
        if computed != info.checksum:
            raise CorruptFileError(
                f"{self.path}: tensor {info.name!r} fails its {self.metadata.checksum} checksum "
                f"(stored {info.checksum & U64:#018x}, computed {computed & U64:#018x}); "
                f"{FIX_DAMAGED}"
            )

    def _frame(self, info: TensorInfo) -> DataFrame | None:
        self._check_unchanged()
        column = self._footer.row_group(info.row_group).column(self._data_column)
        whole = FileSpan(self._fd, 0, os.fstat(self._fd).st_size)
        return data_frame(whole, column, info.nbytes)

    def read_plain(
        self, info: TensorInfo, *, verify: bool = True
    ) -> tuple[np.ndarray, pa.Buffer | None] | None:
        """A plain row decoded straight from its zstd frame (weightfile/stream.py): (a new array
        of the stored dtype and shape, the float32 scale bytes of an int8_sym_channel row or None).

        No Arrow page buffer is held or copied out of: the array is the only copy. None when the
        row is split, group-quantized or empty, or its row group is not laid out the way our writer
        lays it out (then use ``read``). Raises CorruptFileError like ``read``.
        """
        quant_ok = info.quant_type in (None, QUANT_INT8_SYM_CHANNEL)
        frame = self._plain_frame(info) if quant_ok else None
        if frame is None:
            return None
        out = np.empty(info.shape, NUMPY_DTYPES[info.dtype])
        hasher = self._decode_plain(info, frame, pieces(out), verify)
        scales = self._scales(info) if info.quant_type is not None else None
        if hasher is not None:
            if scales is not None:
                hasher.update(scales)
            self._check(info, hasher.value())
        return out, scales

    def read_int8(self, info: TensorInfo, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """An int8_sym_channel row: the int8 matrix (its shape) and its float32 scale per row,
        straight from the zstd frame where our writer laid the row out (``read_plain``), else
        through Arrow (``read``). Raises CorruptFileError like ``read``."""
        data, scales = self.read_plain(info, verify=verify) or self.read(info, verify=verify)
        return np.frombuffer(data, np.int8).reshape(info.shape), np.frombuffer(scales, np.float32)

    def read_quantized(
        self, info: TensorInfo, quantize, *, verify: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A plain float32 matrix quantized to int8 as it decodes: ``quantize(rows) -> (q,
        scales)`` (``format.quantize_int8_rows``) runs on each piece of whole rows, so the
        float32 matrix is never held. None where the row is not a plain float32 matrix laid out
        the way our writer lays it out."""
        matrix = info.dtype == "float32" and info.quant_type is None and len(info.shape) == 2
        frame = self._plain_frame(info) if matrix else None
        if frame is None:
            return None
        q, scales, targets = quantizing(*info.shape, quantize)
        hasher = self._decode_plain(info, frame, targets, verify)
        if hasher is not None:
            self._check(info, hasher.value())
        return q, scales

    def _plain_frame(self, info: TensorInfo) -> DataFrame | None:
        plain = info.encoding == ENCODING_PLAIN and info.n_params
        return self._frame(info) if plain else None

    def _decode_plain(self, info: TensorInfo, frame: DataFrame, targets, verify: bool):
        """``stream.decode_plain`` into ``targets``; returns the hasher that saw the bytes (None
        without ``verify``)."""
        hasher = CHECKSUMS[self.metadata.checksum]() if verify else None
        where = f"{self.path}: tensor {info.name!r}"
        try:
            decode_plain(frame, info.nbytes, targets, hasher, where=where)
        except CorruptFileError as e:
            raise CorruptFileError(f"{e}; {FIX_DAMAGED}") from e
        return hasher

    def _scales(self, info: TensorInfo) -> pa.Buffer:
        """The ``scales`` value of an int8_sym_channel row (float32, one per output row)."""
        return self._columns(info, ["scales"])[0]

    def _columns(self, info: TensorInfo, columns: list[str]) -> list[pa.Buffer]:
        """The values of ``columns`` (``data`` and / or quantization columns) in the tensor's row
        group, each checked for its expected size. Raises CorruptFileError."""
        self._check_unchanged()
        try:
            table = self._reader().read_row_group(
                info.row_group, columns=columns, use_threads=False
            )
        except ARROW_ERRORS as e:
            raise CorruptFileError(
                f"{self.path}: tensor {info.name!r} (row group {info.row_group}) cannot be "
                f"decoded ({e}); {FIX_DAMAGED}"
            ) from e
        values = [_value(self.path, info, table, c) for c in columns]
        expected = {"data": info.nbytes}
        expected |= dict(zip(quant_columns(info.quant_type), quant_sizes(info), strict=True))
        sizes = [expected[c] for c in columns]
        if any(v.size != n for v, n in zip(values, sizes, strict=True)):
            raise CorruptFileError(
                f"{self.path}: tensor {info.name!r} holds {[v.size for v in values]} "
                f"bytes in {columns}, expected {sizes} for {info.dtype} {info.shape}; {FIX_DAMAGED}"
            )
        return values

    def read_split(
        self, info: TensorInfo, *, upcast: bool, verify: bool = True
    ) -> np.ndarray | None:
        """A byte-stream-split 2-byte row decoded straight from its zstd frame (weightfile/stream.py).

        Returns float32 (``upcast``) or the stored elements as int16 bits, in a new array; None when
        the C extension is not built, the row is not split, or its row group is not laid out the way
        our writer lays it out (then use ``read``). Raises CorruptFileError like ``read``.
        """
        if info.encoding != ENCODING_BYTE_STREAM_SPLIT or not info.n_params:
            return None
        frame = self._frame(info) if _format.native is not None else None
        if frame is None:
            return None
        loop, out = _format.native_split_decoder(info.dtype, upcast, info.n_params)
        algorithm = self.metadata.checksum if verify else None
        where = f"{self.path}: tensor {info.name!r}"
        try:
            computed = decode_split(
                frame, info.n_params, loop, out, algorithm=algorithm, where=where
            )
        except CorruptFileError as e:
            raise CorruptFileError(f"{e}; {FIX_DAMAGED}") from e
        if verify:
            self._check(info, computed)
        return out
