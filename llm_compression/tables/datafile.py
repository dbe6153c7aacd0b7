"""Data files of appends: pyarrow writes every column but ``vector``; we write the vector pages.

pyarrow encodes a ``list<float32>`` column level by level, one repetition and one definition
level per float (apache/arrow#34510): 0.31 CPU s per 100k x 384 rows here, against 0.14 s for
the same floats as a flat column. In an embedding table every list holds ``dim`` floats and
nothing is null, so the levels of a page are the same few bytes per row, and the values are the
floats as they are in memory (PLAIN, uncompressed). So pyarrow writes the other columns (ids,
sources, timestamps, metadata structs: snappy, no dictionaries, one row group) into memory; we
put the vector column chunk after the column before it, and rewrite the footer to list it: its
schema elements, its column chunk (with the encoding and level statistics pyarrow writes for
it), its column order and the Arrow schema of the whole table. The floats go from the caller's
buffer to the file through ``os.writev`` (no copy in user space), and the file's xxh3-64 is
taken from the same buffers (no read back). The file is an ordinary Parquet file: data page v1,
PLAIN values, RLE levels, no page checksums (pyarrow's default; ``_llmc_checksums.jsonl`` holds
the file's checksum). The vector column is one page (up to ``PAGE_BYTES``) whose floats start
64-byte aligned, so that ``vector_rows`` maps them at open instead of decoding them (decision
0013).

Tables whose vector column is not ``schema.VECTOR_TYPE`` without nulls, with rows of one length,
are written by pyarrow alone.
"""

from __future__ import annotations

import base64
import functools
import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ..weightfile import thrift_compact as tc
from .checksums import file_hash
from .schema import VECTOR_TYPE

MAGIC = b"PAR1"
VECTOR = "vector"
# One page per file up to 1 GiB of floats (Parquet page sizes are int32), so that the values are
# one contiguous run in the file, which ``vector_rows`` maps; 64-byte aligned, like numpy's arrays.
PAGE_BYTES = 1 << 30
ALIGN = 64
IOV_MAX = 512  # buffers per os.writev (Linux allows 1024)

# Parquet enums (parquet.thrift)
FLOAT, REQUIRED, REPEATED, LIST_CONVERTED = 4, 0, 2, 3
PLAIN, RLE, DATA_PAGE = 0, 3, 0
UNCOMPRESSED = 0
# FileMetaData, RowGroup, ColumnChunk and ColumnMetaData field ids used below
SCHEMA, ROW_GROUPS, KEY_VALUES, COLUMN_ORDERS = 2, 4, 5, 7
RG_COLUMNS, RG_BYTES, RG_OFFSET, RG_COMPRESSED = 1, 2, 5, 6
CHUNK_META = 3
CHUNK_OFFSETS = (2, 4, 6)  # file_offset, offset_index_offset, column_index_offset
META_OFFSETS = (9, 10, 11, 14)  # data, index, dictionary page, bloom filter offsets


def write(path: Path, table: pa.Table) -> str:
    """Write ``table`` as the Parquet file ``path``; returns the file's xxh3-64 (hex)."""
    vectors = _uniform_vectors(table)
    if vectors is None:
        return _write_with_pyarrow(path, table)
    at = table.schema.get_field_index(VECTOR)
    head = pa.BufferOutputStream()
    pq.write_table(table.remove_column(at), head, row_group_size=max(1, len(table)),
                   **_other_columns(table))  # fmt: skip
    head = memoryview(head.getvalue()).cast("B")
    footer_at = len(head) - 8 - int.from_bytes(head[-8:-4], "little")
    meta = tc.Reader(head[footer_at:-8]).struct()
    if len(_items(meta, ROW_GROUPS)) != 1:  # pyarrow split the rows: its footer is not ours
        return _write_with_pyarrow(path, table)
    leaf, element = _leaf_of(meta, at)
    chunks = _items(_items(meta, ROW_GROUPS)[0], RG_COLUMNS)
    insert = _start(chunks[leaf]) if leaf < len(chunks) else footer_at
    pages, size = _pages(vectors)
    pad = bytes(-(insert + len(pages[0]) + len(pages[1])) % ALIGN)  # a gap before the chunk
    _add_vector(meta, table, (leaf, element), (insert, len(pad), size), vectors.shape,
                len(pages) // 3)  # fmt: skip
    footer = meta.encode()
    parts = [head[:insert], pad, *pages, head[insert:footer_at], footer,
             len(footer).to_bytes(4, "little") + MAGIC]  # fmt: skip
    return _write_parts(path, parts)


def _other_columns(table: pa.Table) -> dict:
    """pyarrow's options for the columns it writes: snappy, no dictionaries, id statistics."""
    return {"compression": "snappy", "use_dictionary": False,
            "write_statistics": ["id"] if "id" in table.column_names else False}  # fmt: skip


def _write_with_pyarrow(path: Path, table: pa.Table) -> str:
    codecs = {name: "none" if name == VECTOR else "snappy" for name in table.column_names}
    options = {**_other_columns(table), "compression": codecs}
    pq.write_table(table, path, **options)
    return file_hash(path)


def _uniform_vectors(table: pa.Table) -> np.ndarray | None:
    """The vector column as (rows, dim) float32 without a copy; None when it is not ours
    (another type, nulls, rows of other lengths) or the table is empty."""
    if VECTOR not in table.column_names or len(table) == 0:
        return None
    field = table.schema.field(VECTOR)
    if field.type != VECTOR_TYPE or field.nullable:
        return None
    column = table.column(VECTOR).combine_chunks()
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, 4 * column.offset)
    dim = int(offsets[1] - offsets[0])
    if column.null_count or dim == 0 or np.any(np.diff(offsets) != dim):
        return None
    values = column.values
    if values.null_count:
        return None
    flat = np.frombuffer(values.buffers()[1], np.float32, len(values), 4 * values.offset)
    return flat[offsets[0] : offsets[-1]].reshape(len(column), dim)


def vector_rows(path: Path, rows: int, dim: int) -> np.ndarray | None:
    """The floats of a data file's vector column as a read-only (rows, dim) float32 array mapped
    from the file (no copy, no decoding), or None when the file is not laid out as ``write``
    lays it out: one row group, the vector column one uncompressed PLAIN page whose levels are
    exactly those of ``rows`` lists of ``dim`` floats, the values aligned. Other files (other
    writers, several pages) are decoded by pyarrow instead."""
    try:
        with open(path, "rb") as f:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start = _vector_chunk_start(pq.read_metadata(path), rows * dim)
        if start is None:
            return None
        reader = tc.Reader(memoryview(view)[start : start + 256])
        header = reader.struct()
    except (OSError, ValueError, pa.ArrowException, tc.Malformed):
        return None
    levels = _levels(dim, rows)
    at = start + reader.pos + len(levels)
    if not _is_our_page(header, rows * dim, len(levels)) or at % ALIGN:
        return None
    if at + 4 * rows * dim > len(view) or view[at - len(levels) : at] != levels:
        return None
    return np.frombuffer(view, np.float32, rows * dim, at).reshape(rows, dim)


def _is_our_page(header: tc.Struct, values: int, level_bytes: int) -> bool:
    """Whether a page header is of one uncompressed PLAIN data page: ``level_bytes`` of levels,
    then ``values`` floats."""
    page = _field(header, 5) or tc.Struct()
    size = level_bytes + 4 * values
    got = (
        _field(header, 1),
        _field(header, 2),
        _field(header, 3),
        _field(page, 1),
        _field(page, 2),
    )
    return got == (DATA_PAGE, size, size, values, PLAIN)


def _field(struct: tc.Struct, fid: int):
    return struct[fid][1] if fid in struct else None


def _vector_chunk_start(meta: pq.FileMetaData, values: int) -> int | None:
    """Offset of the vector column chunk when it is one uncompressed chunk of ``values`` floats."""
    if meta.num_row_groups != 1:
        return None
    group = meta.row_group(0)
    for i in range(group.num_columns):
        column = group.column(i)
        if column.path_in_schema == f"{VECTOR}.list.element":
            plain = column.compression == "UNCOMPRESSED" and column.physical_type == "FLOAT"
            return column.data_page_offset if plain and column.num_values == values else None
    return None


# -- the vector column's pages -------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _levels(dim: int, rows: int) -> bytes:
    """Repetition then definition levels (v1 data page: each run list prefixed by its length) of
    ``rows`` lists of ``dim`` floats, none null. Repetition: a run of one 0 and a run of
    ``dim - 1`` ones per row; definition: one run of 1 (the list's max level) for every float."""
    row = b"\x02\x00" + (tc.uvarint((dim - 1) << 1) + b"\x01" if dim > 1 else b"")
    definition = tc.uvarint(rows * dim << 1) + b"\x01"
    return b"".join(len(b).to_bytes(4, "little") + b for b in (row * rows, definition))


def _page_header(rows: int, dim: int, size: int) -> bytes:
    data = tc.encode_struct((1, tc.I32, rows * dim), (2, tc.I32, PLAIN), (3, tc.I32, RLE),
                            (4, tc.I32, RLE))  # fmt: skip
    return tc.encode_struct((1, tc.I32, DATA_PAGE), (2, tc.I32, size), (3, tc.I32, size),
                            (5, tc.STRUCT, data))  # fmt: skip


def _pages(vectors: np.ndarray) -> tuple[list, int]:
    """Header, levels and values of every page (buffers, in file order), and their bytes."""
    n, dim = vectors.shape
    per_page = max(1, PAGE_BYTES // (4 * dim))
    raw = vectors.view(np.uint8).reshape(n, 4 * dim)
    parts, size = [], 0
    for start in range(0, n, per_page):
        rows = min(per_page, n - start)
        levels, values = _levels(dim, rows), raw[start : start + rows].reshape(-1)
        header = _page_header(rows, dim, len(levels) + values.nbytes)
        parts += [header, levels, values]
        size += len(header) + len(levels) + values.nbytes
    return parts, size


# -- the footer ----------------------------------------------------------------------------------


def _leaf_of(meta: tc.Struct, at: int) -> tuple[int, int]:
    """(leaf column index, schema element index) where top-level field ``at`` goes."""
    elements = _items(meta, SCHEMA)
    i, leaves = 1, 0
    for _ in range(at):
        i, n = _skip_field(elements, i)
        leaves += n
    return leaves, i


def _items(struct: tc.Struct, field: int) -> list:
    """The items of a list field (an empty list when the field is absent)."""
    return struct[field][1][1] if field in struct else []


def _skip_field(elements: list[tc.Struct], i: int) -> tuple[int, int]:
    """(index after the field starting at element ``i``, its leaf count)."""
    children = elements[i].get(5, (tc.I32, 0))[1]
    if not children:
        return i + 1, 1
    j, leaves = i + 1, 0
    for _ in range(children):
        j, n = _skip_field(elements, j)
        leaves += n
    return j, leaves


def _start(chunk: tc.Struct) -> int:
    """Offset of a column chunk's first page (its dictionary page, when it has one)."""
    meta = chunk[CHUNK_META][1]
    return min(meta[f][1] for f in (9, 11) if f in meta)


def _add_vector(meta: tc.Struct, table: pa.Table, where: tuple[int, int],
                span: tuple[int, int, int], shape: tuple[int, int], n_pages: int) -> None:  # fmt: skip
    """List the vector column chunk in the footer ``meta``: ``where`` (leaf column, schema
    element) it goes; ``span``: (offset pyarrow's bytes are cut at, gap, chunk bytes) in the file."""
    (leaf, element), (insert, gap, size), (n, dim) = where, span, shape
    elements = _items(meta, SCHEMA)
    root = elements[0]
    root[5] = (tc.I32, root[5][1] + 1)
    elements[element:element] = _vector_elements(table.schema.field(VECTOR).name)
    group = _items(meta, ROW_GROUPS)[0]
    for chunk in _items(group, RG_COLUMNS):
        _shift(chunk, insert, gap + size)
    _items(group, RG_COLUMNS).insert(leaf, _vector_chunk(n, dim, insert + gap, size, n_pages))
    if leaf == 0:  # the row group starts at its first column chunk
        group[RG_OFFSET] = (tc.I64, insert + gap)
    group[RG_BYTES] = (tc.I64, group[RG_BYTES][1] + size)
    group[RG_COMPRESSED] = (tc.I64, group[RG_COMPRESSED][1] + size)
    if COLUMN_ORDERS in meta:
        _items(meta, COLUMN_ORDERS).insert(leaf, tc.Struct({1: (tc.STRUCT, tc.Struct())}))
    arrow = base64.b64encode(table.schema.serialize().to_pybytes())
    pairs = [kv for kv in _items(meta, KEY_VALUES) if kv[1][1] != b"ARROW:schema"]
    pairs.append(tc.Struct({1: (tc.BINARY, b"ARROW:schema"), 2: (tc.BINARY, arrow)}))
    meta[KEY_VALUES] = (tc.LIST, (tc.STRUCT, pairs))


def _vector_elements(name: str) -> list[tc.Struct]:
    """SchemaElements of a required ``list<float32>`` with required items, as pyarrow writes it."""
    return [
        tc.Struct(
            {
                3: (tc.I32, REQUIRED),
                4: (tc.BINARY, name.encode()),
                5: (tc.I32, 1),
                6: (tc.I32, LIST_CONVERTED),
                10: (tc.STRUCT, tc.Struct({3: (tc.STRUCT, tc.Struct())})),
            }
        ),  # fmt: skip
        tc.Struct({3: (tc.I32, REPEATED), 4: (tc.BINARY, b"list"), 5: (tc.I32, 1)}),
        tc.Struct({1: (tc.I32, FLOAT), 3: (tc.I32, REQUIRED), 4: (tc.BINARY, b"element")}),
    ]


def _vector_chunk(n: int, dim: int, offset: int, size: int, n_pages: int) -> tc.Struct:
    """The ColumnChunk of the vector column, with the encoding and level statistics that pyarrow
    writes for it."""
    page_stats = tc.Struct({1: (tc.I32, DATA_PAGE), 2: (tc.I32, PLAIN), 3: (tc.I32, n_pages)})
    levels = tc.Struct({2: (tc.LIST, (tc.I64, [n, n * (dim - 1)])),  # repetition histogram
                        3: (tc.LIST, (tc.I64, [0, n * dim]))})  # definition histogram  # fmt: skip
    meta = tc.Struct({
        1: (tc.I32, FLOAT), 2: (tc.LIST, (tc.I32, [RLE, PLAIN])),
        3: (tc.LIST, (tc.BINARY, [VECTOR.encode(), b"list", b"element"])),
        4: (tc.I32, UNCOMPRESSED), 5: (tc.I64, n * dim), 6: (tc.I64, size), 7: (tc.I64, size),
        9: (tc.I64, offset), 13: (tc.LIST, (tc.STRUCT, [page_stats])), 16: (tc.STRUCT, levels),
    })  # fmt: skip
    return tc.Struct({2: (tc.I64, 0), 3: (tc.STRUCT, meta)})


def _shift(chunk: tc.Struct, insert: int, size: int) -> None:
    """Move the offsets of a column chunk written after ``insert`` by ``size`` bytes."""
    for struct, fields in ((chunk, CHUNK_OFFSETS), (chunk[CHUNK_META][1], META_OFFSETS)):
        for f in fields:
            if f in struct and struct[f][1] >= insert > 0:
                struct[f] = (struct[f][0], struct[f][1] + size)


def _write_parts(path: Path, parts: list) -> str:
    """Write the buffers to a new file with ``os.writev``; their xxh3-64 (hex)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    digest = xxhash.xxh3_64()
    for view in views:
        digest.update(view)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while views:
            written = os.writev(fd, views[:IOV_MAX])
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views and written:
                views[0] = views[0][written:]
    except BaseException:
        path.unlink(missing_ok=True)  # a full disk: leave no partial file behind
        raise
    finally:
        os.close(fd)
    return digest.hexdigest()
