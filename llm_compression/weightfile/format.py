"""The format's constants, Arrow schema, record types and the dtype casts (docs/format.md)."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

try:  # the C loops of _unsplit.c; absent when the install had no C compiler (numpy does the same)
    from . import _unsplit as native
except ImportError:  # pragma: no cover - depends on the build
    native = None
    logging.getLogger(__name__).warning(
        "llm_compression.weightfile._unsplit is not built (no C compiler when llm_compression was "
        "installed): float16/bfloat16 weights load ~1.6x slower through numpy; reinstall with "
        "gcc or clang available (`pip install -e .`) to build it"
    )

FORMAT_VERSION = 1
# "int4": group-wise int4 matrices (weightfile/groupwise.py); "gguf": a GGUF's Q4_0/Q4_1/Q8_0
# blocks as they are (no requantizing), every other float tensor float32.
STORAGE_DTYPES = ("float32", "float16", "bfloat16", "int8", "int4", "gguf")
# Integer and bool tensors (rare: e.g. index tables) keep their dtype, unquantized.
KEPT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "bool")
QUANT_INT8_SYM_CHANNEL = "int8_sym_channel"
# The ``checksum`` column's algorithm, named in the file's metadata. xxh3_64 hashes at ~8 GB/s per
# core here, zlib.crc32 at ~2 GB/s: with crc32 the checksum was 13-17% of a float16 load's CPU.
# Files written with crc32 (before 0.1.0's decision 0004) still verify.
CHECKSUM_ALGORITHM = "xxh3_64"
# Levels 1-19 give the same size on weights (entropy coding is all that helps: MiniLM float16 0.4617
# at level 1, 0.4620 at 3) and decode at the same ~1 GB/s per core; 1 writes fastest.
ZSTD_LEVEL = 1
# A Parquet BYTE_ARRAY value has a 32-bit length: one tensor stores at most 2 GiB - 1 bytes.
MAX_TENSOR_BYTES = 2**31 - 1
_BF16_CHUNK = 1 << 24  # elements converted per step: bounds the float32->bfloat16 temporaries


def package_version() -> str:
    """The installed llm_compression version, recorded as ``created_by`` in every file."""
    from importlib import metadata  # ~25 ms of imports (email, zipfile): writers only

    try:
        return metadata.version("llm_compression")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


# How the bytes of ``data`` are laid out (column ``encoding``). byte_stream_split stores the k-th byte
# of every element together (all low bytes, then all high bytes for 2-byte floats): the low bytes of
# float16/bfloat16 weights are nearly random and the high bytes (sign, exponent) compress well, so
# zstd stores the first stream raw and entropy-codes only the second. On real MiniLM float16 the file
# shrinks from 0.921 to 0.849 of the float16 bytes and zstd decodes ~1.5-2x faster. float32 is kept
# plain: splitting it also shrinks it (0.916 -> 0.829) but un-splitting into fresh memory costs what
# the faster zstd saves, and plain float32 rows load without any copy (docs/format.md, "Speed").
ENCODING_PLAIN = "plain"
ENCODING_BYTE_STREAM_SPLIT = "byte_stream_split"
ENCODINGS = (ENCODING_PLAIN, ENCODING_BYTE_STREAM_SPLIT)
SPLIT_DTYPES = ("float16", "bfloat16")

# Source tensors the runtime does not use (a BertModel's pooler, position_ids buffers, a tied
# lm_head, CTranslate2 config scalars) are kept, so a file is a faithful copy of its checkpoint, under
# "unused/<source format>/<upstream name>": canonical names never contain "/", so the namespace is
# apart from them, and the format ("hf", "ct2", "gguf") says which checkpoint layout the name is of.
UNUSED_PREFIX = "unused/"


def unused_name(source_format: str, upstream: str) -> str:
    """The row name of an unused upstream tensor: ``unused/<source_format>/<upstream>``."""
    return f"{UNUSED_PREFIX}{source_format}/{upstream}"


def is_unused(name: str) -> bool:
    """True for rows that hold an unused source tensor (the loader skips them)."""
    return name.startswith(UNUSED_PREFIX)


def split_unused(name: str) -> tuple[str, str] | None:
    """``(source_format, upstream name)`` of an unused row; None for a canonical tensor."""
    if not is_unused(name):
        return None
    source_format, _, upstream = name[len(UNUSED_PREFIX) :].partition("/")
    return source_format, upstream


META_PREFIX = "llm_compression."
FILE_PREFIX = META_PREFIX + "file."  # one key per bundled file: base64(zstd(bytes))
# A hash of every other llm_compression.* key and value (config, family, bundled files, the tensor
# index ...), so an edit to the metadata is caught like an edit to tensor data. Files written before
# it have no such key: they load as before, unchecked (WeightFileMetadata.metadata_checked).
METADATA_CHECKSUM_KEY = META_PREFIX + "metadata_checksum"

SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("encoding", pa.string(), nullable=False),
        pa.field("data", pa.large_binary(), nullable=False),
        pa.field("n_params", pa.int64(), nullable=False),
        pa.field("quant_type", pa.string()),
        pa.field("scales", pa.large_binary()),
        pa.field("zero_points", pa.large_binary()),
        pa.field("quant_axis", pa.int32()),
        pa.field("group_size", pa.int32()),
        pa.field("checksum", pa.int64(), nullable=False),
    ]
)
INDEX_COLUMNS = [f.name for f in SCHEMA if f.name not in ("data", "scales", "zero_points")]
# The same fields, per row, as JSON under META_PREFIX + "tensors": opening a file reads the index
# from the footer (~1 ms for 398 tensors) instead of decoding the small columns of every row group.
INDEX_KEY = "tensors"
NUMPY_DTYPES = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # raw bfloat16 bits
    **{k: np.dtype(k).newbyteorder("<") for k in KEPT_DTYPES},
    "uint4": np.dtype("u1"),  # two 4-bit values per byte (int4_group_asym rows only)
}


@dataclass(frozen=True)
class WeightFileMetadata:
    """What a weight file says about itself (its key-value metadata), without any tensor data."""

    path: Path
    format_version: int
    family: str
    config: dict[str, Any]
    files: dict[str, bytes]
    sources: dict[str, str]
    created_by: str
    storage_dtype: str
    num_tensors: int
    total_params: int
    checksum: str
    file_size: int
    metadata_checked: bool = False  # True when the file has a metadata checksum and it matched


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table, read from the small columns only (no tensor data decoded)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    n_params: int
    quant_type: str | None
    quant_axis: int | None
    group_size: int | None
    checksum: int
    row_group: int
    stored_bytes: int  # compressed bytes of the row group in the file

    @property
    def nbytes(self) -> int:
        """Bytes of the stored (decoded) data, scales excluded."""
        if self.dtype == "uint4":
            return (self.n_params + 1) // 2
        return self.n_params * NUMPY_DTYPES[self.dtype].itemsize


class _Crc32:
    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: Any) -> None:
        self.crc = zlib.crc32(data, self.crc)

    def value(self) -> int:
        return self.crc


class _Xxh3:
    def __init__(self) -> None:
        self.state = xxhash.xxh3_64()

    def update(self, data: Any) -> None:
        self.state.update(data)

    def value(self) -> int:
        digest = self.state.intdigest()
        return digest - (1 << 64) if digest >= 1 << 63 else digest  # int64 column: two's complement


# Incremental hashers by algorithm name: update(bytes) in stored byte order, then value().
CHECKSUMS: dict[str, type[_Crc32] | type[_Xxh3]] = {"xxh3_64": _Xxh3, "crc32": _Crc32}


def checksum(
    data: Any, scales: Any = None, zero_points: Any = None, *, algorithm: str = CHECKSUM_ALGORITHM
) -> int:
    """The ``checksum`` column's value: a hash of the stored data bytes, continued over the scale
    bytes of quantized rows, then their zero points (offsets) when they have them. xxh3_64 is
    stored as a signed int64 (two's complement)."""
    hasher = CHECKSUMS[algorithm]()
    hasher.update(data)
    for extra in (scales, zero_points):
        if extra is not None:
            hasher.update(extra)
    return hasher.value()


def quant_columns(quant_type: str | None) -> list[str]:
    """The columns beside ``data`` that a row of ``quant_type`` fills."""
    if quant_type is None:
        return []
    return ["scales", "zero_points"] if quant_type == "int4_group_asym" else ["scales"]


def quant_sizes(info: TensorInfo) -> list[int]:
    """Expected byte sizes of ``quant_columns(info.quant_type)``: float32 per row, or float16 per
    group of ``info.group_size`` inputs."""
    if info.quant_type is None:
        return []
    if info.quant_type == "int8_sym_channel":
        return [4 * info.shape[0]]
    groups = info.n_params // (info.group_size or 1)
    return [2 * groups] * len(quant_columns(info.quant_type))


def metadata_checksum(kv: dict[str, str], *, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """``"<algorithm>:<hex>"`` of every ``llm_compression.*`` key and value of ``kv`` but the
    checksum's own, in key order, each key and value as UTF-8 preceded by its byte length (8 bytes,
    little-endian), so no two different key sets hash the same bytes."""
    hasher = CHECKSUMS[algorithm]()
    for key in sorted(k for k in kv if k.startswith(META_PREFIX) and k != METADATA_CHECKSUM_KEY):
        for text in (key, kv[key]):
            raw = text.encode("utf-8")
            hasher.update(len(raw).to_bytes(8, "little"))
            hasher.update(raw)
    return f"{algorithm}:{hasher.value() & ((1 << 64) - 1):016x}"


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of ``x`` rounded to nearest even; NaN stays NaN (quiet), inf stays inf."""
    f = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(f.shape, np.uint16)
    for start in range(0, f.size, _BF16_CHUNK):
        u = f[start : start + _BF16_CHUNK].view(np.uint32)
        rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16
        nan = np.isnan(f[start : start + _BF16_CHUNK])
        rounded[nan] = (u[nan] >> 16) | np.uint32(0x0040)
        out[start : start + _BF16_CHUNK] = rounded
    return out.reshape(np.shape(x))


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact float32 values of bfloat16 bits (uint16)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def split_bytes(array: np.ndarray) -> np.ndarray:
    """byte_stream_split of a contiguous array: byte k of every element, for k = 0 .. itemsize-1."""
    width = array.dtype.itemsize
    return np.ascontiguousarray(array.reshape(-1).view(np.uint8).reshape(-1, width).T).reshape(-1)


def native_split_decoder(dtype: str, upcast: bool, n: int):
    """``(loop, out)`` to decode n split 2-byte ``dtype`` elements with ``_unsplit``'s C loop
    ``loop(low, high, out)``: ``out`` is a new float32 array with ``upcast``, else int16 (the stored
    elements' bits). None when the extension is not built."""
    if native is None:
        return None
    if not upcast:
        return native.join16, np.empty(n, np.int16)
    loop = native.float16_to_float32 if dtype == "float16" else native.bfloat16_to_float32
    return loop, np.empty(n, np.float32)


def join_bytes(data: Any, itemsize: int) -> np.ndarray:
    """Inverse of ``split_bytes``: the element bytes (uint8, interleaved again) of split ``data``."""
    streams = np.frombuffer(data, np.uint8).reshape(itemsize, -1)
    if itemsize == 2 and native is not None:
        out = np.empty(streams.size, np.uint8)
        native.join16(streams[0], streams[1], out)
        return out
    out = np.empty((streams.shape[1], itemsize), np.uint8)
    for k in range(itemsize):
        out[:, k] = streams[k]
    return out.reshape(-1)


def quantize_int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``w ~= q * scales[:, None]``, ``|error| <= scale / 2`` per row.

    All-zero rows get scale 0 (and q = 0), so they dequantize to exact zeros. A row whose
    ``max|w| / 127`` underflows float32 (max below ~9e-44: subnormal values) gets the smallest
    subnormal as its scale, so it is stored exactly rather than as zeros.
    """
    w = np.asarray(w, dtype=np.float32)
    if not w.shape[1]:
        return np.zeros(w.shape, np.int8), np.zeros(w.shape[0], np.float32)
    amax = np.abs(w).max(axis=1)
    scales = (amax / 127.0).astype(np.float32)
    tiny = np.finfo(np.float32).smallest_subnormal
    scales = np.where((scales == 0) & (amax > 0), tiny, scales).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scales
