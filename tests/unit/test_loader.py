"""WeightLoader: dtypes, config, single-tensor reads, parallel decode, load_into."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_compression.errors import ConfigError, InputError, MissingTensorError
from llm_compression.families import BertConfig, preset
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import write_model

CFG = preset("all-minilm-l6-v2")
RNG = np.random.default_rng(1)
TENSORS = {
    "embed.token.weight": RNG.standard_normal((12, 8)).astype(np.float32),
    "layers.0.attn.q.weight": RNG.standard_normal((8, 8)).astype(np.float32),
    "layers.0.attn.q.bias": RNG.standard_normal(8).astype(np.float32),
    "layers.0.mlp.up.weight": RNG.standard_normal((16, 8)).astype(np.float32),
}


@pytest.fixture(params=["float32", "float16", "bfloat16", "int8"])
def written(request, tmp_path):
    return request.param, write_model(
        tmp_path / "m.parquet", TENSORS, config=CFG, dtype=request.param
    )


def test_config_metadata_and_names(written):
    dtype, path = written
    loader = WeightLoader(path)
    assert isinstance(loader.config, BertConfig) and loader.config == CFG
    assert loader.metadata.storage_dtype == dtype
    assert loader.tensor_names == list(TENSORS)
    assert loader.info("layers.0.attn.q.weight").shape == (8, 8)


def test_force_float32_returns_float32_close_to_input(written):
    dtype, path = written
    weights = WeightLoader(path).load_weights()
    assert list(weights) == list(TENSORS)
    tol = {"float32": 0, "float16": 1e-3, "bfloat16": 8e-3, "int8": 1e-3}[dtype]
    for name, value in TENSORS.items():
        got = weights[name]
        assert got.dtype == torch.float32 and tuple(got.shape) == value.shape
        if dtype == "int8" and name.endswith(".weight"):
            # quantized (linear weights and the token embedding): within half a step per row
            step = np.abs(value).max(axis=1, keepdims=True) / 127
            assert (np.abs(got.numpy() - value) <= step / 2 + 1e-6).all()
        else:
            np.testing.assert_allclose(got.numpy(), value, rtol=tol, atol=tol)


def test_stored_dtypes_without_force_float32(written):
    dtype, path = written
    weights = WeightLoader(path, force_float32=False).load_weights()
    expected = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    assert weights["layers.0.attn.q.bias"].dtype == expected.get(dtype, torch.float16)
    assert weights["embed.token.weight"].dtype == expected.get(dtype, torch.int8)
    assert weights["layers.0.attn.q.weight"].dtype == expected.get(dtype, torch.int8)


def test_get_quantized_matches_dequantized(tmp_path):
    path = write_model(tmp_path / "m.parquet", TENSORS, config=CFG, dtype="int8")
    loader = WeightLoader(path)
    q, scales = loader.get_quantized("layers.0.mlp.up.weight")
    assert q.dtype == torch.int8 and q.shape == (16, 8)
    assert scales.dtype == torch.float32 and scales.shape == (16,)
    torch.testing.assert_close(
        q.float() * scales[:, None], loader.get_layer("layers.0.mlp.up.weight"), rtol=0, atol=0
    )
    with pytest.raises(InputError, match="not quantized.*get_layer"):
        loader.get_quantized("layers.0.attn.q.bias")


def test_float32_bit_exact_and_subset(tmp_path):
    path = write_model(tmp_path / "m.parquet", TENSORS, config=CFG, dtype="float32")
    loader = WeightLoader(path)
    subset = loader.load_weights(["layers.0.mlp.up.weight", "embed.token.weight"])
    assert list(subset) == ["layers.0.mlp.up.weight", "embed.token.weight"]
    for name, value in subset.items():
        assert np.array_equal(value.numpy(), TENSORS[name])
    assert np.array_equal(
        loader.get_layer("layers.0.attn.q.bias").numpy(), TENSORS["layers.0.attn.q.bias"]
    )


def test_one_thread_equals_many(tmp_path):
    path = write_model(tmp_path / "m.parquet", TENSORS, config=CFG, dtype="int8")
    one = WeightLoader(path, num_threads=1).load_weights()
    many = WeightLoader(path, num_threads=4).load_weights()
    for name in TENSORS:
        assert torch.equal(one[name], many[name])


class Tiny(torch.nn.Module):
    def __init__(self, vocab: int = 12):
        super().__init__()
        self.embed = torch.nn.Module()
        self.embed.token = torch.nn.Embedding(vocab, 8)
        self.layers = torch.nn.ModuleList([torch.nn.Module()])
        self.layers[0].attn = torch.nn.Module()
        self.layers[0].attn.q = torch.nn.Linear(8, 8)


def test_load_into_meta_module(tmp_path):
    path = write_model(tmp_path / "m.parquet", TENSORS, config=CFG, dtype="float32")
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(MissingTensorError, match=r"unexpected \['layers.0.mlp.up.weight'\]"):
        WeightLoader(path).load_into(model)
    with torch.device("meta"):
        model = Tiny()
    missing, unexpected = WeightLoader(path).load_into(model, strict=False)
    assert missing == [] and unexpected == ["layers.0.mlp.up.weight"]
    assert model.layers[0].attn.q.weight.device.type == "cpu"
    assert np.array_equal(model.embed.token.weight.detach().numpy(), TENSORS["embed.token.weight"])


def test_load_into_reports_missing_and_shape_mismatch(tmp_path):
    small = {k: v for k, v in TENSORS.items() if k != "layers.0.attn.q.bias"}
    path = write_model(tmp_path / "m.parquet", small, config=CFG)
    with pytest.raises(MissingTensorError, match=r"missing \['layers.0.attn.q.bias'\]"):
        WeightLoader(path).load_into(Tiny())
    with pytest.raises(ConfigError, match="does not fit Tiny"):
        WeightLoader(path).load_into(Tiny(vocab=5), strict=False)


def test_float32_rows_are_not_copied(tmp_path, monkeypatch):
    from llm_compression.weightfile import WeightFile

    path = write_model(tmp_path / "m.parquet", TENSORS, config=CFG, dtype="float32")
    arrays = {}
    read_plain = WeightFile.read_plain

    def recording_read(self, info, **options):  # decompresses straight into the array
        array, scales = read_plain(self, info, **options)
        arrays[info.name] = array
        return array, scales

    monkeypatch.setattr(WeightFile, "read_plain", recording_read)
    weights = WeightLoader(path).load_weights()
    assert set(arrays) == set(weights)
    for name, tensor in weights.items():
        assert tensor.data_ptr() == arrays[name].ctypes.data


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("force_float32", [True, False])
def test_split_rows_decode_bit_exact_across_chunks(tmp_path, dtype, force_float32):
    from llm_compression.weightfile import float32_to_bfloat16_bits
    from llm_compression.weightfile.decoding import CHUNK as _CHUNK

    rng = np.random.default_rng(2)
    value = rng.standard_normal(2 * _CHUNK + 7).astype(np.float32) * 1e-3
    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, 6e-8, -6e-8, 1e-40, 65504.0, 3e38]
    value[: len(special)] = special
    value = value.reshape(-1, 1)
    path = write_model(tmp_path / "m.parquet", {"w": value}, config=CFG, dtype=dtype)
    got = WeightLoader(path, force_float32=force_float32).get_layer("w")
    if dtype == "float16":
        with np.errstate(over="ignore"):
            bits = value.astype(np.float16).view(np.uint16)
        reference = torch.from_numpy(bits.view(np.float16))
    else:
        bits = float32_to_bfloat16_bits(value)
        reference = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    assert got.shape == value.shape
    if force_float32:
        assert got.dtype == torch.float32
        want = reference.float()
        assert torch.equal(got.isnan(), want.isnan())
        same = got.view(torch.int32) == want.view(torch.int32)
        assert bool(same[~want.isnan()].all())  # bit-exact, signed zeros and subnormals included
    else:
        assert got.dtype == reference.dtype
        assert np.array_equal(got.view(torch.int16).numpy(), bits.view(np.int16))
