"""One tensor decode: a row of a weight file -> a numpy array, by the fastest path available.

Paths, chosen per row (docs/format.md, "Reading fast"):

1. split float16/bfloat16 rows laid out as our writer lays them out, with the C extension: the zstd
   frame is streamed in cache-sized pieces, hashed and joined (+ upcast) by the C loop
   (``WeightFile.read_split``, weightfile/stream.py);
2. other split rows with the C extension: Arrow decodes the page, the C loop joins (+ upcasts);
3. without the C extension: numpy joins the two byte streams per 32768-element chunk into cached
   scratch and the cast writes the float32 output (torch's vectorized cast when torch is already
   imported, as in the loader: 13x faster than numpy's float16 cast; else a numpy lookup table);
4. plain rows laid out as our writer lays them out: the zstd frame is decompressed straight into
   the returned array (hashed piece by piece; ``WeightFile.read_plain``): no page buffer, no copy;
   float16/bfloat16 are then upcast in one numpy pass, int8 rows are dequantized (``q * scale``);
5. other plain rows: Arrow decodes the page; float32 comes back as a view of the decoded buffer,
   the rest as in 4.

numpy only: torch is used for the cast of path 3 only when something else imported it already.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import MissingTensorError
from . import format as _format
from .format import ENCODING_BYTE_STREAM_SPLIT, NUMPY_DTYPES, TensorInfo
from .groupwise import GROUP_QUANT_TYPES

# Elements joined and upcast per step on the numpy path. Equal to torch's internal GRAIN_SIZE
# (32768): a copy_ of at most that many elements runs on the calling decode thread, never on an
# OpenMP team (one team per calling thread would oversubscribe the cores), and 64 KiB of scratch
# plus source stays in L2.
CHUNK = 1 << 15
_FLOAT16_TABLE: np.ndarray | None = None  # float32 value of every float16 bit pattern (256 KiB)


def decode_tensor(
    file: Any,
    tensor: TensorInfo | str,
    *,
    upcast: bool = True,
    dequantize: bool | None = None,
    verify: bool = True,
) -> np.ndarray:
    """Decode one tensor row of an open ``WeightFile`` into a numpy array of its shape.

    Parameters
    ----------
    file : an open ``WeightFile``.
    tensor : its ``TensorInfo`` or its name.
    upcast : float16/bfloat16 rows come back as float32 (exact); False keeps the stored elements
        bit-exactly: float16 as ``np.float16``, bfloat16 as its ``np.uint16`` bits.
    dequantize : int8_sym_channel rows come back as float32 ``q * scales[:, None]``; False returns
        the int8 ``q`` (scales via ``WeightFile.read``). Default: the value of ``upcast``.
    verify : check the row's checksum.

    Returns a new array (for a row of another writer's layout returned as stored: a writable view
    of the decoded Arrow buffer). Raises CorruptFileError for a damaged row, MissingTensorError for an
    unknown name.

    Example
    -------
    >>> w = decode_tensor(WeightFile("minilm.parquet"), "embed.token.weight")  # doctest: +SKIP
    """
    info = _info(file, tensor)
    dequantize = upcast if dequantize is None else dequantize
    if not info.n_params:
        return np.empty(info.shape, _out_dtype(info, upcast, dequantize))
    if info.encoding == ENCODING_BYTE_STREAM_SPLIT:
        return _split(file, info, upcast, verify).reshape(info.shape)
    if info.quant_type in GROUP_QUANT_TYPES:
        group = file.read_group(info, verify=verify)
        return group.dequantize() if dequantize else group.unpacked()
    plain = file.read_plain(info, verify=verify)  # path 4, None when it does not apply
    if plain is not None:
        array, scales = plain
        if info.quant_type is not None and dequantize:
            return np.multiply(array, np.frombuffer(scales, np.float32)[:, None], dtype=np.float32)
        if not upcast or info.dtype not in _format.SPLIT_DTYPES:
            return array
        data = array.reshape(-1).view(np.uint8)
    else:  # path 5
        data, scales = file.read(info, verify=verify)
    if info.quant_type is not None and dequantize:
        rows = np.frombuffer(scales, np.float32).reshape(-1, 1)  # int8_sym_channel: one per row
        q = np.frombuffer(data, np.int8).reshape(info.shape)
        return np.multiply(q, rows, dtype=np.float32)
    if upcast and info.dtype == "float16":
        return np.frombuffer(data, np.float16).astype(np.float32).reshape(info.shape)
    if upcast and info.dtype == "bfloat16":
        return _bfloat16_to_float32(np.frombuffer(data, np.uint16)).reshape(info.shape)
    return np.frombuffer(data, NUMPY_DTYPES[info.dtype]).reshape(info.shape)


def _info(file: Any, tensor: TensorInfo | str) -> TensorInfo:
    if isinstance(tensor, TensorInfo):
        return tensor
    try:
        return file.tensors[tensor]
    except KeyError:
        raise MissingTensorError(
            f"{file.path} has no tensor {tensor!r}; list its tensors with `llm-compression "
            "inspect FILE`"
        ) from None


def _out_dtype(info: TensorInfo, upcast: bool, dequantize: bool) -> np.dtype:
    if info.quant_type is not None:
        unpacked = np.uint8 if info.dtype == "uint4" else np.int8
        return np.dtype(np.float32 if dequantize else unpacked)
    if upcast and info.dtype in _format.SPLIT_DTYPES:
        return np.dtype(np.float32)
    return NUMPY_DTYPES[info.dtype]


def _split(file: Any, info: TensorInfo, upcast: bool, verify: bool) -> np.ndarray:
    """A byte-stream-split 2-byte row: float32 (``upcast``) or the stored dtype, flat."""
    out = file.read_split(info, upcast=upcast, verify=verify)  # path 1, None when it does not apply
    if out is None:
        data, _ = file.read(info, verify=verify, raw=True)
        low, high = np.frombuffer(data, np.uint8).reshape(2, info.n_params)
        decoder = _format.native_split_decoder(info.dtype, upcast, info.n_params)
        if decoder is not None:  # path 2
            loop, out = decoder
            loop(low, high, out)
        else:  # path 3
            out = _join_numpy(low, high, info.dtype, upcast)
    return out if upcast else out.view(NUMPY_DTYPES[info.dtype])


def _join_numpy(low: np.ndarray, high: np.ndarray, dtype: str, upcast: bool) -> np.ndarray:
    """The numpy join of split 2-byte floats (no C extension), upcast per cache-sized chunk."""
    n = len(low)
    if not upcast:
        bits = np.left_shift(high, 8, dtype=np.uint16)
        np.bitwise_or(bits, low, out=bits)
        return bits
    out = np.empty(n, np.float32)
    scratch = np.empty(min(n, CHUNK), np.uint16)
    cast = _caster(scratch, out, dtype)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        bits = scratch[: stop - start]
        np.left_shift(high[start:stop], 8, out=bits, dtype=np.uint16)
        np.bitwise_or(bits, low[start:stop], out=bits)
        cast(start, stop)
    return out


def _caster(scratch: np.ndarray, out: np.ndarray, dtype: str):
    """``cast(start, stop)``: write ``out[start:stop]`` from the joined bits in ``scratch``."""
    torch = sys.modules.get("torch")
    if torch is not None:  # one C++ vectorized copy per chunk on the calling thread
        stored = torch.bfloat16 if dtype == "bfloat16" else torch.float16
        source = torch.from_numpy(scratch.view(np.int16)).view(stored)
        chunks = torch.from_numpy(out).split(CHUNK)  # one C++ call makes every output view
        return lambda start, stop: chunks[start // CHUNK].copy_(source[: stop - start])
    if dtype == "bfloat16":
        words = out.view(np.uint32)
        return lambda start, stop: np.left_shift(
            scratch[: stop - start], 16, out=words[start:stop], dtype=np.uint32
        )
    table = _float16_table()
    return lambda start, stop: np.take(table, scratch[: stop - start], out=out[start:stop])


def _float16_table() -> np.ndarray:
    global _FLOAT16_TABLE
    if _FLOAT16_TABLE is None:
        _FLOAT16_TABLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return _FLOAT16_TABLE


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    out = np.empty(bits.shape, np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)  # bfloat16 bits are float32's upper half
    return out.view(np.float32)
