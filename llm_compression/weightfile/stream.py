"""Decode a byte-stream-split tensor straight from its zstd frame, one cache-sized piece at a time.

Through Arrow, a float16 tensor of n elements moves ~20 bytes per element through memory: zstd
writes the 2n-byte page, Arrow copies the value out of it, the checksum reads it, the join reads it
again and writes 4n bytes of float32. Here the frame is decompressed by python-zstandard in pieces:
the low bytes into a per-thread scratch buffer (hashed while each piece is still in cache), then
each piece of high bytes into a small buffer that is hashed and joined with the matching low bytes
into the output by the C loop (``_unsplit.c``). Memory traffic falls to ~12 bytes per element and
no page-sized buffer is allocated per tensor. zstandard, the hash and the C loop release the GIL, so
decode threads run in parallel.

The checksum is the same as on the Arrow path: the stored bytes in stored order (all low bytes,
then all high bytes) hashed with the file's algorithm.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from ..errors import CorruptFileError
from .format import CHECKSUMS
from .pages import PLAIN_LENGTH_BYTES, DataFrame

# High bytes decompressed, hashed and joined per step: 256 KiB of them plus the matching low bytes
# and 1 MiB of float32 output stay within L2.
PIECE = 1 << 18
# Low-byte buffers up to this size are kept per thread and reused; a larger tensor's (an LLM's token
# embedding: 100352 x 2048 is 205 MB) is allocated for that tensor only, so no thread holds it after.
KEEP_SCRATCH = 1 << 25


class _Scratch(threading.local):
    """Per-thread buffers reused across tensors: the low-byte stream and one piece of high bytes."""

    def __init__(self) -> None:
        self.low = np.empty(0, np.uint8)
        self.high = np.empty(PIECE, np.uint8)
        self.decompressor = zstandard.ZstdDecompressor()

    def low_bytes(self, n: int) -> np.ndarray:
        if n > KEEP_SCRATCH:
            return np.empty(n, np.uint8)
        if len(self.low) < n:
            self.low = np.empty(n, np.uint8)
        return self.low[:n]


_SCRATCH = _Scratch()


def _fill(reader, view: memoryview, where: str) -> None:
    """Read exactly len(view) decompressed bytes into ``view``."""
    filled = 0
    while filled < len(view):
        got = reader.readinto(view[filled:])
        if not got:
            raise CorruptFileError(
                f"{where}: the data page ends after {filled} of {len(view)} expected bytes"
            )
        filled += got


def decode_split(
    frame: DataFrame, n: int, loop, out: np.ndarray, *, algorithm: str | None, where: str
) -> int | None:
    """Decompress the 2n split bytes of ``frame`` and write ``loop(low, high, out_piece)`` per piece.

    ``loop`` is one of ``_unsplit``'s functions and ``out`` its output array of n elements. Returns
    the checksum of the stored bytes (``algorithm``; None when ``algorithm`` is None). Raises
    CorruptFileError (message prefixed with ``where``) when the frame does not decode to a 4-byte
    length of 2n followed by exactly 2n bytes.
    """
    scratch = _SCRATCH
    hasher = CHECKSUMS[algorithm]() if algorithm is not None else None
    low = scratch.low_bytes(n)
    try:
        with scratch.decompressor.stream_reader(frame.frame, read_across_frames=False) as reader:
            _check_length(reader, 2 * n, where)
            low_view = memoryview(low)
            for start in range(0, n, PIECE):
                piece = low_view[start : start + PIECE]
                _fill(reader, piece, where)
                if hasher is not None:
                    hasher.update(piece)
            high_view = memoryview(scratch.high)
            for start in range(0, n, PIECE):
                stop = min(start + PIECE, n)
                piece = high_view[: stop - start]
                _fill(reader, piece, where)
                if hasher is not None:
                    hasher.update(piece)
                loop(low[start:stop], piece, out[start:stop])
            if reader.read(1):
                raise CorruptFileError(f"{where}: the data page holds more than {2 * n} bytes")
    except zstandard.ZstdError as e:
        raise CorruptFileError(f"{where}: the zstd data page does not decode ({e})") from e
    return hasher.value() if hasher is not None else None


def _check_length(reader, nbytes: int, where: str) -> None:
    """Read the value's 4-byte length prefix: CorruptFileError unless it says ``nbytes``."""
    head = bytearray(PLAIN_LENGTH_BYTES)
    _fill(reader, memoryview(head), where)
    if int.from_bytes(head, "little") != nbytes:
        raise CorruptFileError(
            f"{where}: the data page holds a value of {int.from_bytes(head, 'little')} bytes, "
            f"expected {nbytes}"
        )


def decode_plain(frame: DataFrame, nbytes: int, targets, hasher, *, where: str) -> None:
    """Decompress a plain value of ``nbytes`` straight into ``targets``, writable buffers filled
    in turn (pieces of the returned array: no page buffer, no copy out of one; or one scratch
    piece a generator hands out again once it has used it), feeding each piece to ``hasher`` (or
    None) while it is in cache.

    Raises CorruptFileError (prefixed with ``where``) when the frame does not decode to a 4-byte
    length of ``nbytes`` followed by exactly that many bytes.
    """
    try:
        with _SCRATCH.decompressor.stream_reader(frame.frame, read_across_frames=False) as reader:
            _check_length(reader, nbytes, where)
            for target in targets:
                piece = memoryview(target).cast("B")
                _fill(reader, piece, where)
                if hasher is not None:
                    hasher.update(piece)
            if reader.read(1):
                raise CorruptFileError(f"{where}: the data page holds more than {nbytes} bytes")
    except zstandard.ZstdError as e:
        raise CorruptFileError(f"{where}: the zstd data page does not decode ({e})") from e


def pieces(out: np.ndarray):
    """``out``'s bytes in pieces of 4 * PIECE (1 MiB): ``decode_plain``'s targets for a whole
    array."""
    flat, size = out.reshape(-1).view(np.uint8), 4 * PIECE
    return (flat[start : start + size] for start in range(0, len(flat), size))


def quantizing(rows: int, cols: int, quantize) -> tuple[np.ndarray, np.ndarray, object]:
    """(q, scales, targets): ``decode_plain`` fills one float32 scratch piece of whole rows at a
    time and ``quantize(piece) -> (q, scales)`` turns each into int8 rows as it goes, so the float32
    matrix is never held (a float file's 47 MB MiniLM token table becomes 12 MB of int8)."""
    q, scales = np.empty((rows, cols), np.int8), np.empty(rows, np.float32)
    step = max(1, (4 * PIECE) // max(4 * cols, 1))
    scratch = np.empty((min(step, rows), cols), np.float32)

    def targets():
        for start in range(0, rows, step):
            piece = scratch[: min(step, rows - start)]
            yield piece
            q[start : start + len(piece)], scales[start : start + len(piece)] = quantize(piece)

    return q, scales, targets()
