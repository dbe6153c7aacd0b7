"""load_model(dtype="int8" | "int4"): causal LMs computing from group-quantized weights on ORT."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import tiny_causal_lm

from llm_compression.errors import ConfigError
from llm_compression.families import build_model
from llm_compression.loader import load_weights_into
from llm_compression.weightfile import write_model

pytest.importorskip("onnxruntime")
from llm_compression.core.quantized import QuantEmbedding, QuantLinear  # noqa: E402
from llm_compression.families.quantized import load_quantized  # noqa: E402


@pytest.fixture(scope="module", params=[("llama", True), ("olmo2", False)], ids=str)
def stored(request, tmp_path_factory):
    _, cfg, state = tiny_causal_lm(request.param[0], tie=request.param[1], heads=2)  # head 16
    path = tmp_path_factory.mktemp("q") / "m.parquet"
    write_model(path, {k: v.numpy() for k, v in state.items()}, config=cfg, dtype="float32")
    return path, load_weights_into(build_model(cfg), state)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "per-matrix"])
@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.03), ("int4", 0.3)])
def test_quantized_logits_follow_float32(stored, dtype: str, tolerance: float, graph) -> None:
    path, ref = stored
    model = load_quantized(path, dtype, graph=graph)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears, "every linear layer computes from quantized weights"
    layer = model.layers[0]
    assert layer.attn.q is None and layer.mlp.up is None
    if graph:
        assert model.decoder_graph is not None
        assert not any(isinstance(m, QuantLinear) for m in model.modules())  # one copy: ORT's
    else:
        assert isinstance(layer.attn.qkv, QuantLinear)  # fused: one matmul
        assert isinstance(layer.mlp.gate_up, QuantLinear)
    ids = torch.tensor([[5, 17, 33, 8, 61, 9]])
    with torch.inference_mode():
        got, want = model.logits(ids), ref.logits(ids)
    scale = want.abs().max()
    assert (got - want).abs().max() <= tolerance * scale
    assert len(model.generate_ids([5, 17, 33], max_new_tokens=5)) <= 5


def test_tied_table_is_one_quantized_embedding(tmp_path) -> None:
    _, cfg, state = tiny_causal_lm("llama", tie=True)
    path = write_model(tmp_path / "t.parquet", {k: v.numpy() for k, v in state.items()},
                       config=cfg, dtype="float32")  # fmt: skip
    model = load_quantized(path, "int8")
    assert isinstance(model.token_embed, QuantEmbedding)


def test_quantized_dtype_refuses_other_families(tmp_path) -> None:
    with pytest.raises(ConfigError, match="the quantized path takes one of"):
        load_quantized(tmp_path / "x.parquet", "int2")


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "per-matrix"])
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_batch_equals_each_prompt_alone(stored, dtype: str, graph: bool) -> None:
    model = load_quantized(stored[0], dtype, graph=graph)
    prompts = [[5, 17, 33, 8, 61, 9], [3, 4], [7, 8, 9, 10]]
    batch = model.generate_ids(prompts, max_new_tokens=10)
    assert batch == [model.generate_ids(p, max_new_tokens=10) for p in prompts]


def test_stacked_rows_keep_every_value() -> None:
    import numpy as np

    from llm_compression.families.quantized import stacked
    from llm_compression.weightfile.groupwise import quantize_int4, quantize_int8

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, 64)).astype(np.float32) for n in (8, 4))
    for quantize in (quantize_int4, quantize_int8):
        qa, qb = quantize("a", a), quantize("b", b)
        both = stacked([qa, qb])
        assert both.shape == (12, 64)
        np.testing.assert_array_equal(
            both.dequantize(), np.concatenate([qa.dequantize(), qb.dequantize()])
        )
    assert stacked([quantize_int4("a", a), quantize_int8("b", b)]) is None
