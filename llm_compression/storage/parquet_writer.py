"""A Parquet writer for fragments: pages go from the Arrow buffers to the file, one checksum pass.

pyarrow's writer encodes a ``fixed_size_list<float32, dim>`` column level by level: a repetition
and a definition level per float, RLE-encoded one value at a time and counted into a level
histogram (apache/arrow#34510). In a fragment every list has ``dim`` items and nothing is null, so
the levels of a page are the same few bytes per row: this writer emits them as RLE runs, and the
floats go from the caller's buffer to the file through ``os.writev`` (no copy in user space). The
page crc32 (the Parquet page checksum, verified by readers) is the one pass over the floats; the
file's crc32 (the manifest checksum) is combined from the page checksums, not recomputed. A
50,000 x 384 fragment took 348 ms of CPU with ``pq.write_table`` plus the crc32 read-back, and
takes 89 ms with this writer.

The files are ordinary Parquet (format 2, data page v1, PLAIN values, RLE levels, page checksums)
with the Arrow schema stored the way pyarrow stores it (``ARROW:schema``), so pyarrow reads back
the exact Arrow types and DuckDB or any Parquet reader reads them. The columns supported are the
ones fragments have: ``string`` (nullable or not), ``timestamp[us]`` and
``fixed_size_list<float32>`` without nulls.
"""

from __future__ import annotations

import base64
import functools
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__
from .. import thrift_compact as tc
from .crc32 import crc32_combine
from .manifest import crash_point

MAGIC = b"PAR1"
PAGE_BYTES = 1 << 20  # target page size: pyarrow's default data_page_size
CREATED_BY = f"llm_compression version {__version__} (fragment writer)"
_FLUSH_PARTS = 512  # queued buffers per os.writev at most (IOV_MAX is 1024 on Linux)
# Bytes per os.writev, after which the kernel is asked to start writing them to disk: the final
# fsync then waits for the last few MiB only (2 x 75 MB written by 2 threads: 212 -> 138 ms).
_FLUSH_BYTES = 8 << 20
_ZSTD = pa.Codec("zstd")  # pyarrow's default level, as pq.write_table(compression="zstd") uses

# Parquet enums (parquet.thrift).
_FLOAT, _INT64, _BYTE_ARRAY = 4, 2, 6  # Type
_REQUIRED, _OPTIONAL, _REPEATED = 0, 1, 2  # FieldRepetitionType
_UTF8, _LIST_TYPE, _TIMESTAMP_MICROS = 0, 3, 10  # ConvertedType
_PLAIN, _RLE = 0, 3  # Encoding
_CODECS = {"none": 0, "zstd": 6}  # CompressionCodec
_DATA_PAGE = 0  # PageType


# -- output --------------------------------------------------------------------------------------


class _Sink:
    """Appends buffers to a file descriptor with ``os.writev``; keeps the offset and file crc32."""

    def __init__(self, fd: int) -> None:
        self.fd, self.offset, self.crc = fd, 0, 0
        self._parts: list[memoryview] = []
        self._flushed = 0  # bytes handed to the kernel

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self._queue(view)

    def page(self, header: bytes, body: Sequence, body_crc: int, reuse_crc: bool) -> None:
        """A page: its header, then its body, whose crc32 is ``body_crc``. ``reuse_crc``: combine
        it into the file checksum instead of hashing the body again (worth it for large pages of
        a repeated length: the combining operator is cached per length)."""
        self.write(header)
        views = [memoryview(part).cast("B") for part in body]
        if reuse_crc:
            self.crc = crc32_combine(self.crc, body_crc, sum(len(v) for v in views))
        for view in views:
            if not reuse_crc:
                self.crc = zlib.crc32(view, self.crc)
            self._queue(view)

    def _queue(self, view: memoryview) -> None:
        self._parts.append(view)
        self.offset += len(view)
        if len(self._parts) >= _FLUSH_PARTS or self.offset - self._flushed >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is queued, and start its writeback to disk without waiting for it."""
        parts = self._parts
        while parts:
            written = os.writev(self.fd, parts)
            while parts and written >= len(parts[0]):
                written -= len(parts.pop(0))
            if parts and written:
                parts[0] = parts[0][written:]
        if hasattr(os, "posix_fadvise") and self.offset > self._flushed:  # Linux: DONTNEED
            # starts the writeback of dirty pages (they stay cached; only clean ones are dropped)
            os.posix_fadvise(self.fd, self._flushed, self.offset - self._flushed,
                             os.POSIX_FADV_DONTNEED)  # fmt: skip
        self._flushed = self.offset


# -- columns -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Page:
    body: list  # buffers, written in order
    crc: int
    num_values: int
    uncompressed: int  # size of the body before compression
    reuse_crc: bool = False


def _page_header(page: _Page, size: int) -> bytes:
    data_header = tc.encode_struct(
        (1, tc.I32, page.num_values), (2, tc.I32, _PLAIN), (3, tc.I32, _RLE), (4, tc.I32, _RLE)
    )
    crc = page.crc - (1 << 32) if page.crc >= 1 << 31 else page.crc  # an i32 in thrift
    return tc.encode_struct(
        (1, tc.I32, _DATA_PAGE),
        (2, tc.I32, page.uncompressed),
        (3, tc.I32, size),
        (4, tc.I32, crc),
        (5, tc.STRUCT, data_header),
    )


def _levels(body: bytes) -> bytes:
    """Levels of a v1 data page: the RLE-encoded runs, prefixed by their length."""
    return len(body).to_bytes(4, "little") + body


@functools.lru_cache(maxsize=64)
def _list_levels(dim: int, rows: int, max_def: int) -> bytes:
    """Repetition and definition levels of ``rows`` lists of ``dim`` items, none null: a run of
    one 0 and a run of ``dim - 1`` ones per row, then one run of ``max_def`` for every item."""
    row = b"\x02\x00" + (tc.uvarint((dim - 1) << 1) + b"\x01" if dim > 1 else b"")
    return _levels(row * rows) + _levels(tc.uvarint(rows * dim << 1) + bytes([max_def]))


def _vector_pages(column: pa.ChunkedArray, max_def: int) -> Iterator[_Page]:
    dim = column.type.list_size
    per_page = max(1, PAGE_BYTES // (4 * dim))
    for chunk in column.chunks:
        values = chunk.flatten()
        if chunk.null_count or values.null_count or len(values) != len(chunk) * dim:
            raise ValueError("vector column has nulls; fragments hold complete vectors only")
        raw = values.to_numpy(zero_copy_only=True).view(np.uint8)
        for start in range(0, len(chunk), per_page):
            rows = min(per_page, len(chunk) - start)
            levels = _list_levels(dim, rows, max_def)
            data = raw[4 * dim * start : 4 * dim * (start + rows)]
            size = len(levels) + data.nbytes
            crc = zlib.crc32(data, zlib.crc32(levels))
            yield _Page([levels, data], crc, rows * dim, size, reuse_crc=rows == per_page)


def _plain_strings(array: pa.Array) -> np.ndarray:
    """PLAIN BYTE_ARRAY values: a 4-byte little-endian length before each string's bytes."""
    if len(array) == 0:
        return np.empty(0, np.uint8)
    offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, 4 * array.offset)
    lengths = np.diff(offsets)
    prefix = 4 * np.arange(len(array)) + (offsets[:-1] - offsets[0])  # where each length goes
    out = np.empty(4 * len(array) + int(offsets[-1] - offsets[0]), np.uint8)
    where = (prefix[:, None] + np.arange(4)).reshape(-1)
    out[where] = lengths.astype("<u4").view(np.uint8)
    is_data = np.ones(len(out), bool)
    is_data[where] = False
    if array.buffers()[2] is not None:
        out[is_data] = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return out


def _flat_pages(array: pa.Array, optional: bool, codec: str) -> Iterator[_Page]:
    """Pages of a string or timestamp column (levels when nullable), compressed by ``codec``."""
    timestamps = pa.types.is_timestamp(array.type)
    if timestamps:
        row_bytes = 8
    else:
        offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, 4 * array.offset)
        row_bytes = 4 + (int(offsets[-1] - offsets[0]) // max(1, len(array)))
    per_page = max(1, PAGE_BYTES // row_bytes)
    for start in range(0, len(array), per_page):
        part = array.slice(start, per_page)
        rows, body = len(part), []
        if optional:
            body.append(_def_levels(part.is_valid().to_numpy(zero_copy_only=False)))
            part = part.drop_null()
        if timestamps:
            values = np.frombuffer(part.buffers()[1], np.int64, len(part), 8 * part.offset)
        else:
            values = _plain_strings(part)
        raw = b"".join([*body, values.tobytes()])
        data = raw if codec == "none" else _ZSTD.compress(raw, asbytes=True)
        yield _Page([data], zlib.crc32(data), rows, len(raw))


def _def_levels(valid: np.ndarray) -> bytes:
    """Definition levels (bit width 1) of a nullable flat column: one RLE run when all rows are
    alike, else one bit-packed run, which is the validity bitmap itself (LSB first)."""
    if valid.all() or not valid.any():
        return _levels(tc.uvarint(len(valid) << 1) + bytes([int(valid.any())]))
    bits = np.packbits(valid, bitorder="little").tobytes()
    return _levels(tc.uvarint(len(bits) << 1 | 1) + bits)


# -- schema, column chunks, footer ---------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    """One Parquet leaf column: the Arrow column it comes from and how it is encoded."""

    name: str
    path: tuple[str, ...]
    physical: int
    optional: bool  # a flat nullable column (definition levels of bit width 1)
    max_def: int = 0  # of a vector column's items (its levels are written per page)


def _logical(fid: int, body: bytes = b"\x00") -> bytes:
    return tc.encode_struct(
        (fid, tc.STRUCT, body)
    )  # a LogicalType union member (empty struct by default)


def _schema(schema: pa.Schema) -> tuple[list[bytes], list[_Leaf]]:
    """Parquet SchemaElements (depth-first) and leaves of a fragment's Arrow schema."""
    elements = [tc.encode_struct((4, tc.BINARY, "schema"), (5, tc.I32, len(schema)))]
    leaves = []
    for field in schema:
        kind, name = field.type, field.name
        rep = _OPTIONAL if field.nullable else _REQUIRED
        if pa.types.is_string(kind):
            elements.append(tc.encode_struct((1, tc.I32, _BYTE_ARRAY), (3, tc.I32, rep), (4, tc.BINARY, name),
                                    (6, tc.I32, _UTF8), (10, tc.STRUCT, _logical(1))))  # fmt: skip
            leaves.append(_Leaf(name, (name,), _BYTE_ARRAY, field.nullable))
        elif pa.types.is_timestamp(kind) and kind.unit == "us" and not field.nullable:
            unit = tc.encode_struct((2, tc.STRUCT, tc.encode_struct()))  # TimeUnit MICROS
            stamp = tc.encode_struct((1, tc.BOOL, kind.tz is not None), (2, tc.STRUCT, unit))
            elements.append(tc.encode_struct((1, tc.I32, _INT64), (3, tc.I32, rep), (4, tc.BINARY, name),
                                    (6, tc.I32, _TIMESTAMP_MICROS),
                                    (10, tc.STRUCT, _logical(8, stamp))))  # fmt: skip
            leaves.append(_Leaf(name, (name,), _INT64, False))
        elif (
            pa.types.is_fixed_size_list(kind)
            and kind.value_type == pa.float32()
            and not field.nullable
        ):
            item = _OPTIONAL if kind.value_field.nullable else _REQUIRED
            elements += [
                tc.encode_struct(
                    (3, tc.I32, rep),
                    (4, tc.BINARY, name),
                    (5, tc.I32, 1),
                    (6, tc.I32, _LIST_TYPE),
                    (10, tc.STRUCT, _logical(3)),
                ),  # fmt: skip
                tc.encode_struct((3, tc.I32, _REPEATED), (4, tc.BINARY, "list"), (5, tc.I32, 1)),
                tc.encode_struct((1, tc.I32, _FLOAT), (3, tc.I32, item), (4, tc.BINARY, "element")),
            ]
            max_def = 1 + (item == _OPTIONAL)
            leaves.append(_Leaf(name, (name, "list", "element"), _FLOAT, False, max_def))
        else:
            raise TypeError(
                f"column {name!r} of type {kind} (nullable={field.nullable}) is not supported by "
                "the fragment writer; expected string, timestamp[us] or fixed_size_list<float32> "
                "(the fragment schema of storage/table.py)"
            )
    return elements, leaves


@dataclass
class _Chunk:
    """Where one column chunk landed and its sizes, for the footer."""

    offset: int
    num_values: int = 0
    compressed: int = 0  # bytes in the file, page headers included
    uncompressed: int = 0


def _write_chunk(sink: _Sink, column: pa.ChunkedArray, leaf: _Leaf, codec: str) -> _Chunk:
    if leaf.max_def:
        if codec != "none":
            raise ValueError(f"column {leaf.name!r}: vectors are written uncompressed only")
        pages = _vector_pages(column, leaf.max_def)
    else:
        if column.null_count and not leaf.optional:
            raise ValueError(f"column {leaf.name!r} is not nullable but has nulls")
        pages = _flat_pages(column.combine_chunks(), leaf.optional, codec)
    chunk = _Chunk(sink.offset)
    for page in pages:
        size = sum(memoryview(part).nbytes for part in page.body)
        header = _page_header(page, size)
        sink.page(header, page.body, page.crc, page.reuse_crc)
        chunk.num_values += page.num_values
        chunk.compressed += len(header) + size
        chunk.uncompressed += len(header) + page.uncompressed
    return chunk


def _statistics(column: pa.ChunkedArray) -> bytes:
    """Min, max and null count of a string or timestamp column chunk (Parquet's plain order)."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    low, high = (s.as_py() for s in pc.min_max(column).values())
    if low is None:
        return tc.encode_struct((3, tc.I64, column.null_count))

    def plain(value) -> bytes:
        return value.to_bytes(8, "little", signed=True) if isinstance(value, int) else value

    return tc.encode_struct(
        (3, tc.I64, column.null_count), (5, tc.BINARY, plain(high)), (6, tc.BINARY, plain(low))
    )


def _column_chunk(leaf: _Leaf, chunk: _Chunk, codec: str, statistics: bytes | None) -> bytes:
    meta = tc.encode_struct(
        (1, tc.I32, leaf.physical),
        (2, tc.LIST, (tc.I32, [_PLAIN, _RLE])),
        (3, tc.LIST, (tc.BINARY, list(leaf.path))),
        (4, tc.I32, _CODECS[codec]),
        (5, tc.I64, chunk.num_values),
        (6, tc.I64, chunk.uncompressed),
        (7, tc.I64, chunk.compressed),
        (9, tc.I64, chunk.offset),
        (12, tc.STRUCT, statistics),
    )
    return tc.encode_struct(
        (2, tc.I64, 0), (3, tc.STRUCT, meta)
    )  # file_offset 0, as pyarrow writes it


def _footer(schema: pa.Schema, elements: list[bytes], leaves: list[_Leaf], rows: int,
            groups: list[bytes]) -> bytes:  # fmt: skip
    """FileMetaData with the Arrow schema stored the way pyarrow stores it."""
    pairs = [*(schema.metadata or {}).items(), (b"ARROW:schema", base64.b64encode(
        schema.serialize().to_pybytes()))]  # fmt: skip
    return tc.encode_struct(
        (1, tc.I32, 2),
        (2, tc.LIST, (tc.STRUCT, elements)),
        (3, tc.I64, rows),
        (4, tc.LIST, (tc.STRUCT, groups)),
        (
            5,
            tc.LIST,
            (tc.STRUCT, [tc.encode_struct((1, tc.BINARY, k), (2, tc.BINARY, v)) for k, v in pairs]),
        ),
        (6, tc.BINARY, CREATED_BY),
        (7, tc.LIST, (tc.STRUCT, [_logical(1)] * len(leaves))),  # TypeDefinedOrder for every leaf
    )


def write_table(
    table: pa.Table,
    fd: int,
    *,
    row_group_rows: int,
    compression: Mapping[str, str],
    statistics: Sequence[str] = (),
) -> tuple[int, int]:
    """Write ``table`` as a Parquet file to the open file descriptor ``fd``.

    Parameters
    ----------
    table : pyarrow.Table
        Columns of type string, timestamp[us] or fixed_size_list<float32> (no null vectors).
    fd : int
        A file descriptor open for writing at offset 0 (the caller fsyncs and closes it).
    row_group_rows : int
        Rows per row group (the last one holds the rest).
    compression : mapping
        Column name -> ``"zstd"`` or ``"none"`` (vectors: ``"none"`` only); absent means none.
    statistics : sequence of str
        Columns whose chunks get min/max statistics (string or timestamp columns).

    Returns
    -------
    (crc32, size) : tuple of int
        zlib's crc32 of the whole file, and its size in bytes.
    """
    elements, leaves = _schema(table.schema)
    sink = _Sink(fd)
    sink.write(MAGIC)
    groups = [
        _row_group(
            sink, table.slice(start, row_group_rows), leaves, ordinal, compression, statistics
        )  # fmt: skip
        for ordinal, start in enumerate(range(0, table.num_rows, row_group_rows))
    ]
    sink.flush()
    crash_point("fragment_pages")  # every page written, no footer yet
    footer = _footer(table.schema, elements, leaves, table.num_rows, groups)
    sink.write(footer)
    sink.write(len(footer).to_bytes(4, "little") + MAGIC)
    sink.flush()
    return sink.crc, sink.offset


def _row_group(
    sink: _Sink,
    part: pa.Table,
    leaves: list[_Leaf],
    ordinal: int,
    compression: Mapping[str, str],
    statistics: Sequence[str],
) -> bytes:
    """Write the column chunks of one row group; return its RowGroup footer entry."""
    chunks, entries = [], []
    for leaf in leaves:
        codec = compression.get(leaf.name, "none")
        column = part.column(leaf.name)
        chunks.append(_write_chunk(sink, column, leaf, codec))
        stats = _statistics(column) if leaf.name in statistics else None
        entries.append(_column_chunk(leaf, chunks[-1], codec, stats))
    return tc.encode_struct(
        (1, tc.LIST, (tc.STRUCT, entries)),
        (2, tc.I64, sum(c.uncompressed for c in chunks)),
        (3, tc.I64, part.num_rows),
        (5, tc.I64, chunks[0].offset),
        (6, tc.I64, sum(c.compressed for c in chunks)),
        (7, tc.I16, ordinal),
    )
