"""Group-wise quantized layouts (docs/format.md): GGUF blocks kept bit-exactly, int4 quantizing."""

from __future__ import annotations

import numpy as np
import pytest

from llm_compression.errors import ConversionError, FormatError
from llm_compression.families import preset
from llm_compression.weightfile import WeightFile, decode_tensor, write_model
from llm_compression.weightfile.groupwise import (
    GROUP,
    QUANT_INT4_GROUP,
    QUANT_INT8_GROUP,
    from_gguf_blocks,
    quantize_int4,
)

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

CONFIG = preset("smollm2-135m")


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_dequantize_exactly(kind: str) -> None:
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    w = np.random.default_rng(0).normal(0, 0.05, (12, 4 * GROUP)).astype(np.float32)
    raw = quantize(w, qtype)
    kept = from_gguf_blocks(int(qtype), raw, w.shape)
    expected = dequantize(raw, qtype).reshape(w.shape)
    got = kept.dequantize()
    assert np.array_equal(got, expected)  # equal values
    if kind != "Q4_0":  # bit-exact too; Q4_0's d * (8 - 8) may be -0.0 in gguf, +0.0 here
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    want = QUANT_INT8_GROUP if kind == "Q8_0" else QUANT_INT4_GROUP
    assert kept.quant_type == want


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_group_rows_round_trip_through_the_file(tmp_path, kind: str) -> None:
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    w = np.random.default_rng(1).normal(0, 0.05, (6, 2 * GROUP)).astype(np.float32)
    kept = from_gguf_blocks(int(qtype), quantize(w, qtype), w.shape)
    path = write_model(tmp_path / "m.parquet", {"token_embed.weight": kept}, config=CONFIG)
    f = WeightFile(path)
    info = f.tensors["token_embed.weight"]
    assert (info.quant_type, info.group_size) == (kept.quant_type, GROUP)
    back = f.read_group(info)
    assert np.array_equal(back.data, kept.data) and np.array_equal(back.scales, kept.scales)
    assert np.array_equal(decode_tensor(f, info), kept.dequantize())
    assert decode_tensor(f, info, dequantize=False).shape == w.shape


def test_int4_storage_dtype_quantizes_groupwise(tmp_path) -> None:
    w = np.random.default_rng(2).normal(0, 1, (8, 3 * GROUP)).astype(np.float32)
    norm = np.ones(8, np.float32)
    path = write_model(
        tmp_path / "m.parquet", {"a.weight": w, "n.weight": norm}, config=CONFIG, dtype="int4"
    )
    f = WeightFile(path)
    assert f.tensors["a.weight"].quant_type == QUANT_INT4_GROUP
    assert f.tensors["n.weight"].dtype == "float16"
    step = (np.ptp(w.reshape(8, 3, GROUP), axis=-1) / 15).max()
    assert np.abs(decode_tensor(f, "a.weight") - w).max() <= step * 0.51 + 1e-3


def test_int4_needs_groups_of_32() -> None:
    with pytest.raises(ConversionError, match="groups of 32"):
        quantize_int4("x.weight", np.zeros((4, 33), np.float32))


def test_a_tampered_group_size_is_refused(tmp_path) -> None:
    import json

    import pyarrow.parquet as pq

    kept = quantize_int4("a.weight", np.ones((2, GROUP), np.float32))
    path = write_model(tmp_path / "m.parquet", {"a.weight": kept}, config=CONFIG)
    table = pq.read_table(path)
    meta = dict(pq.read_metadata(path).metadata)
    index = json.loads(meta[b"llm_compression.tensors"])
    index[0]["group_size"] = 16
    meta[b"llm_compression.tensors"] = json.dumps(index).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "bad.parquet")
    with pytest.raises(FormatError):
        WeightFile(tmp_path / "bad.parquet")
