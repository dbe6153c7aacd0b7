"""crc32 arithmetic for the fragment writer (parquet_writer.py).

``crc32_combine`` gives ``zlib.crc32(a + b)`` from the checksums of ``a`` and ``b`` (zlib's
crc32_combine, in GF(2)), so a file's crc32 comes from its page checksums without reading the pages
again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

CRC_POLY = 0xEDB88320  # zlib's crc32 (the Parquet page checksum), bit-reflected


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
