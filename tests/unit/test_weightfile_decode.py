"""weightfile.decode_tensor: one function for every row, whatever path it takes.

Every float16 / bfloat16 bit pattern decodes to the same bits through the four paths it may pick:
the streamed C join, Arrow + the C join, numpy + torch's cast, and numpy alone (torch not imported).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from llm_compression.errors import MissingTensorError
from llm_compression.families import preset
from llm_compression.weightfile import WeightFile, decode_tensor, format, reader, write_model

CFG = preset("all-minilm-l6-v2")
ALL_BITS = np.arange(1 << 16, dtype=np.uint16)  # every float16 / bfloat16 bit pattern
PATHS = ["stream+C", "arrow+C", "numpy+torch", "numpy"]


@pytest.fixture(params=PATHS)
def path_name(request, monkeypatch):
    if request.param != "stream+C":
        monkeypatch.setattr(reader.WeightFile, "read_split", lambda self, info, **kw: None)
    if request.param.startswith("numpy"):
        monkeypatch.setattr(format, "native", None)
    if request.param == "numpy":
        monkeypatch.setitem(sys.modules, "torch", None)  # as if torch was never imported
    return request.param


def _expected(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)  # numpy keeps NaN payloads
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    """Bit-equal, except that a NaN only has to stay a NaN (torch's cast quiets NaN payloads)."""
    nan = np.isnan(want)
    return np.array_equal(np.isnan(got), nan) and np.array_equal(
        got[~nan].view(np.uint32), want[~nan].view(np.uint32)
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_bit_pattern_decodes_alike_on_every_path(tmp_path, path_name, dtype):
    # float16 input is stored bit for bit; bfloat16 is rounded from float32 input, which is exact
    # for float32 values that are bfloat16 values (NaNs come back quiet).
    value = _expected(ALL_BITS, dtype) if dtype == "bfloat16" else ALL_BITS.view(np.float16)
    path = write_model(tmp_path / "m.parquet", {"w": value.reshape(256, 256)}, config=CFG,
                       dtype=dtype)  # fmt: skip
    file = WeightFile(path)
    stored = decode_tensor(file, "w", upcast=False)
    assert stored.dtype == format.NUMPY_DTYPES[dtype] and stored.shape == (256, 256)
    bits = stored.reshape(-1).view(np.uint16)
    assert _same(_expected(bits, dtype), _expected(ALL_BITS, dtype))
    got = decode_tensor(file, "w")
    assert got.dtype == np.float32 and got.shape == (256, 256)
    assert _same(got.reshape(-1), _expected(bits, dtype))


def test_int8_rows_dequantize_or_not(tmp_path):
    w = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"lin.weight": w}, config=CFG, dtype="int8",
                       quantize={"lin.weight"})  # fmt: skip
    file = WeightFile(path)
    q = decode_tensor(file, "lin.weight", dequantize=False)
    _, scales = file.read(file.tensors["lin.weight"])
    scales = np.frombuffer(scales, np.float32)
    assert q.dtype == np.int8
    deq = decode_tensor(file, "lin.weight")
    np.testing.assert_array_equal(deq, q * scales[:, None])
    assert np.abs(deq - w).max() <= scales.max() / 2 + 1e-7


def test_plain_float32_rows_are_views_and_empty_rows_decode(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "e": np.zeros((0, 4), np.float32)}
    path = write_model(tmp_path / "m.parquet", tensors, config=CFG, dtype="float16")
    file = WeightFile(path)
    assert decode_tensor(file, "a").dtype == np.float32
    empty = decode_tensor(file, "e", upcast=False)
    assert empty.shape == (0, 4) and empty.dtype == np.float16
    with pytest.raises(MissingTensorError, match="no tensor 'b'"):
        decode_tensor(file, "b")
