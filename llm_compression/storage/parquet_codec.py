"""Thrift compact-protocol encoding and crc32 arithmetic, for the fragment writer (parquet_writer.py).

``thrift_struct`` encodes the Parquet footer and page headers (thrift/doc/specs/
thrift-compact-protocol.md); ``crc32_combine`` gives ``zlib.crc32(a + b)`` from the checksums of
``a`` and ``b`` (zlib's crc32_combine, in GF(2)), so a file's crc32 comes from its page checksums
without reading the pages again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

# Thrift compact protocol type ids (BOOL is carried in the field header: 1 true, 2 false).
T_BOOL, T_I16, T_I32, T_I64, T_BINARY, T_LIST, T_STRUCT = 1, 4, 5, 6, 8, 9, 12
CRC_POLY = 0xEDB88320  # zlib's crc32 (the Parquet page checksum), bit-reflected


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def thrift_value(kind: int, value) -> bytes:
    if kind in (T_I16, T_I32, T_I64):
        return uvarint((value << 1) ^ (value >> 63))  # zigzag
    if kind == T_BINARY:
        data = value.encode() if isinstance(value, str) else bytes(value)
        return uvarint(len(data)) + data
    if kind == T_LIST:
        element, items = value
        size = (
            bytes([len(items) << 4 | element])
            if len(items) < 15
            else bytes([0xF0 | element]) + uvarint(len(items))
        )
        return size + b"".join(thrift_value(element, item) for item in items)
    if kind == T_STRUCT:
        return value  # encoded already by thrift_struct
    return b""  # T_BOOL: the value is in the field header


def thrift_struct(*fields: tuple[int, int, object]) -> bytes:
    """A thrift struct from ``(field id, type, value)``; fields whose value is None are absent."""
    out, last = bytearray(), 0
    for fid, kind, value in fields:
        if value is None:
            continue
        nibble = (1 if value else 2) if kind == T_BOOL else kind
        delta = fid - last
        out += (
            bytes([delta << 4 | nibble]) if 0 < delta <= 15 else bytes([nibble]) + uvarint(fid << 1)
        )
        out += thrift_value(kind, value)
        last = fid
    out.append(0)
    return bytes(out)


# crc32 of concatenated data from the checksums of its parts


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


@functools.lru_cache(maxsize=16)
def _zeros_operator(nbytes: int) -> tuple[int, ...]:
    """The linear map (32 columns) that feeds ``nbytes`` zero bytes through a crc32 register."""
    power = [CRC_POLY] + [1 << i for i in range(31)]  # one zero bit
    result: list[int] | None = None
    bits = 8 * nbytes
    while bits:  # square and multiply over the bits of the length
        if bits & 1:
            result = power if result is None else [_gf2_times(power, col) for col in result]
        bits >>= 1
        if bits:
            power = [_gf2_times(power, col) for col in power]
    return tuple(result or [1 << i for i in range(32)])


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc1 = zlib.crc32(a)``, ``crc2 = zlib.crc32(b)``, ``len(b)``."""
    return _gf2_times(_zeros_operator(len2), crc1) ^ crc2
