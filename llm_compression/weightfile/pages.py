"""The zstd frame of one tensor's data page, found in the file without decoding it through Arrow.

A tensor row group's ``data`` column chunk, as our writer lays it out (docs/format.md, "Reading
fast"), is one Parquet DATA_PAGE: a Thrift compact-protocol page header, then one zstd frame that
decompresses to the PLAIN-encoded value (a 4-byte little-endian length, then the tensor's bytes). No
dictionary page and no levels (the column is required and not repeated).

``data_frame`` parses just enough of the page header to return that frame as a `FileSpan` (or a
slice of a buffer), so the loader can stream-decompress it in cache-sized pieces (joining byte
streams, upcasting and hashing each piece while it is still in cache) instead of having Arrow
decompress the whole page and copy the value out of it. Any other layout (another writer, another
codec, a dictionary page, a DATA_PAGE_V2) returns None, and the caller reads through pyarrow.

The file is read with positional reads (``os.pread``), never memory-mapped: a mapped file that
another process truncates kills the reader with SIGBUS at the first page past the new end, while a
short read is an error we can name (issue 10.3). zstd pulls the frame ~128 KiB at a time, so the
extra copy stays in cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from . import thrift_compact as tc

# parquet.thrift: PageHeader fields and enum values used here.
_PAGE_TYPE, _UNCOMPRESSED_SIZE, _COMPRESSED_SIZE, _DATA_PAGE_HEADER = 1, 2, 3, 5
_NUM_VALUES, _ENCODING = 1, 2  # DataPageHeader fields
_DATA_PAGE, _PLAIN = 0, 0
PLAIN_LENGTH_BYTES = 4  # a PLAIN BYTE_ARRAY value starts with its length as uint32 LE
_MAX_HEADER = 1 << 12  # page headers are tens of bytes; more means this is not our layout


class FileSpan:
    """Bytes ``[start, start + size)`` of an open file, read on demand with ``os.pread``.

    Slicing gives a smaller span without reading; ``read(n)`` (what zstd's stream reader calls)
    returns the next bytes, fewer (then none) where the file has been cut short since.
    """

    def __init__(self, fd: int, start: int, size: int) -> None:
        self.fd, self.start, self.size, self._pos = fd, start, max(size, 0), 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: slice) -> FileSpan:
        begin, end, _ = index.indices(self.size)
        return FileSpan(self.fd, self.start + begin, max(end - begin, 0))

    def __bytes__(self) -> bytes:
        return os.pread(self.fd, self.size, self.start)

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._pos
        data = os.pread(self.fd, left if n < 0 else min(n, left), self.start + self._pos)
        self._pos += len(data)
        return data


@dataclass(frozen=True)
class DataFrame:
    """One data page's zstd frame and what it decompresses to (length prefix + value)."""

    frame: Any  # FileSpan, or a buffer; what zstd's stream_reader takes
    uncompressed_size: int


def _page_header(chunk: memoryview) -> tuple[dict[int, int], tuple[int, int], int]:
    """(top-level i32 fields, (num_values, encoding) of the data page header, header length)."""
    reader = tc.Reader(chunk)
    top: dict[int, int] = {}
    data_page = (-1, -1)
    for field, kind in reader.fields():
        if field in (_PAGE_TYPE, _UNCOMPRESSED_SIZE, _COMPRESSED_SIZE) and kind == tc.I32:
            top[field] = reader.zigzag()
        elif field == _DATA_PAGE_HEADER and kind == tc.STRUCT:
            inner = {}
            for sub, sub_kind in reader.fields():
                if sub in (_NUM_VALUES, _ENCODING) and sub_kind == tc.I32:
                    inner[sub] = reader.zigzag()
                else:
                    reader.skip(sub_kind)
            data_page = (inner.get(_NUM_VALUES, -1), inner.get(_ENCODING, -1))
        else:
            reader.skip(kind)
    return top, data_page, reader.pos


def data_frame(file: Any, column: pq.ColumnChunkMetaData, value_bytes: int) -> DataFrame | None:
    """The zstd frame of a single-value, single-page zstd column chunk, or None for any other layout.

    ``file`` is the whole file: a `FileSpan` (or a buffer); ``value_bytes`` the size the value
    must have.
    """
    if column.compression != "ZSTD" or column.has_dictionary_page or column.num_values != 1:
        return None
    start, size = column.data_page_offset, column.total_compressed_size
    if start < 0 or start + size > len(file):
        return None
    chunk = file[start : start + size]
    try:
        top, (num_values, encoding), header = _page_header(memoryview(bytes(chunk[:_MAX_HEADER])))
    except tc.Malformed:
        return None
    expected_size = PLAIN_LENGTH_BYTES + value_bytes
    ours = (
        top.get(_PAGE_TYPE) == _DATA_PAGE
        and (num_values, encoding) == (1, _PLAIN)
        and top.get(_UNCOMPRESSED_SIZE) == expected_size
        and header + top.get(_COMPRESSED_SIZE, -1) == size
    )
    return DataFrame(chunk[header:], expected_size) if ours else None
