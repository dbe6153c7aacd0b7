"""A float32 causal LM's decode steps in our C kernel (``core.native_decoder.float32_steps``,
decision 0018): the kernel views the model's own weights, gives HF's greedy tokens, and hands
the steps back to torch where it cannot run them or its weights were replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_tiny import tiny_causal_lm, tiny_tokenizer_files
from hostile_helpers import generate_in_threads
from torch import nn

from llm_compression.core.compute_layers import Float32Linear
from llm_compression.loader import load_model
from llm_compression.weightfile import write_model

_decode = pytest.importorskip("llm_compression.core._decode")
from llm_compression.core.native_decoder import NativeDecoder, matrix_spec  # noqa: E402

SIMD = _decode.kernel() == "avx512"
needs_simd = pytest.mark.skipif(not SIMD, reason="this CPU lacks AVX512-VNNI")
PROMPTS = [[5, 17, 33], [9, 9, 2, 40, 12], [61], [7, 8, 9, 10, 11, 3, 4]]


@pytest.fixture(scope="module", params=[("llama", True), ("olmo2", False)], ids=str)
def tiny(request, tmp_path_factory):
    """(HF model, our weight file) of a causal LM the kernel runs: width 128, heads of 64."""
    hf, cfg, state = tiny_causal_lm(request.param[0], tie=request.param[1], heads=2, width=128)
    path = tmp_path_factory.mktemp("f") / "m.parquet"
    tensors = {k: v.numpy() for k, v in state.items()}
    write_model(path, tensors, config=cfg, dtype="float32", files=tiny_tokenizer_files())
    return hf.eval(), path


def _torch_tokens(model, prompt: list[int], n: int) -> list[int]:
    steps, model.float32_steps = model.float32_steps, None
    try:
        return model.generate_ids(prompt, max_new_tokens=n)
    finally:
        model.float32_steps = steps


def test_float32_matrix_is_held_as_it_is_and_sums_in_float32() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 96)).astype(np.float32)
    spec = matrix_spec(w)
    assert spec[0] == 32 and spec[3] is w  # no copy: the kernel views the caller's rows
    x = rng.standard_normal((3, 96)).astype(np.float32)
    out = np.full((3, 37), np.nan, np.float32)
    _decode.matmul(spec, x, 3, out)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-5)
    for bad, match in [
        ((32, 37, 96, w.astype(np.float16), None, None), "float16 values"),
        ((32, 38, 96, w, None, None), "expected 3648 float32"),
        ((32, 37, 96, w, np.ones(37, np.float32), None), "no scales for float32"),
        ((32, 37, 96, w.astype(np.float64), None, None), "float16 or float32"),
    ]:
        with pytest.raises(ValueError, match=match):
            _decode.matmul(bad, x, 3, out)


@needs_simd
@pytest.mark.parametrize("rows, cols, M", [(37, 96, 1), (64, 576, 3), (8, 1536, 4), (41, 160, 9)])
def test_portable_kernel_equals_avx512_bit_for_bit(rows: int, cols: int, M: int) -> None:
    """The AVX512 blocks (4 weight rows by up to 4 activation rows in registers) do the
    portable code's fmaf a lane in the same order: the same bits."""
    rng = np.random.default_rng(rows + cols + M)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((M, cols)).astype(np.float32)
    fast = np.full((M, rows), np.nan, np.float32)
    _decode.matmul(matrix_spec(w), x, M, fast)
    before = _decode.kernel()
    _decode.set_kernel("portable")
    try:
        slow = np.full((M, rows), np.nan, np.float32)
        _decode.matmul(matrix_spec(w), x, M, slow)
    finally:
        _decode.set_kernel(before)
    np.testing.assert_array_equal(fast, slow)


def test_float32_and_quantized_matrices_do_not_mix() -> None:
    from llm_compression.weightfile.groupwise import quantize_int8

    rng = np.random.default_rng(1)
    floats = {k: rng.standard_normal(s).astype(np.float32)
              for k, s in {"qkv": (96, 32), "o": (32, 32), "gate_up": (64, 32), "down": (32, 32)}.items()}  # fmt: skip
    norm, table = np.ones(32, np.float32), np.zeros((8, 16), np.float32)
    layer = tuple(matrix_spec(floats[k]) for k in floats) + (norm, norm, None, None)
    head = matrix_spec(quantize_int8("head", rng.standard_normal((40, 32)).astype(np.float32)))
    with pytest.raises(ValueError, match="every one float32"):
        _decode.create((1, 32, 1, 1, 32, 32, 8), 1e-6, 0, 1, table, table, norm, head, [layer])


@needs_simd
@pytest.mark.parametrize("prefill", ["kernel", "torch"])
def test_greedy_tokens_equal_hf_and_the_torch_steps(tiny, prefill, monkeypatch) -> None:
    """Prompts prefilled on the kernel (short ones) or by torch (long ones: forced here)."""
    from llm_compression.core import generation

    if prefill == "torch":
        monkeypatch.setattr(generation, "KERNEL_PREFILL_ROWS", 0)
    hf, path = tiny
    model = load_model(path)
    assert isinstance(model.float32_steps, NativeDecoder)
    assert type(model.layers[0].attn.qkv) is nn.Linear  # plain rows: the kernel views them
    assert type(model.layers[0].mlp.gate_up) is nn.Linear and model.layers[0].mlp.gate is None
    for prompt in PROMPTS:
        got = model.generate_ids(prompt, max_new_tokens=12)
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                              eos_token_id=2, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
        assert got == [t for t in ref if t != 2][: len(got)] and (
            len(got) == 12 or ref[len(got)] == 2
        )
        assert got == _torch_tokens(model, prompt, 12)


@needs_simd
def test_kernel_logits_follow_torch_and_a_batch_equals_alone(tiny) -> None:
    _, path = tiny
    model = load_model(path)
    ids = torch.tensor([PROMPTS[3]])
    cache = model.new_cache(1, 16)
    with torch.inference_mode():
        want = model.logits(ids)
        got = model.float32_steps.run(model.token_embed(ids), [(c.k, c.v) for c in cache], [0],
                                      last_only=False)  # fmt: skip
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    alone = [model.generate_ids(p, max_new_tokens=10) for p in PROMPTS]
    assert model.generate_ids(PROMPTS, max_new_tokens=10) == alone
    long = [[3 + (i * 7 + j) % 90 for j in range(20 + i)] for i in range(4)]  # 92 padded rows
    alone = [model.generate_ids(p, max_new_tokens=6) for p in long]
    assert model.generate_ids(long, max_new_tokens=6) == alone


@needs_simd
def test_weights_are_viewed_and_a_replaced_weight_hands_the_steps_to_torch(tiny) -> None:
    _, path = tiny
    model = load_model(path)
    weight = model.layers[1].attn.o.weight
    before = model.generate_ids(PROMPTS[0], max_new_tokens=8)
    with torch.no_grad():
        weight.mul_(-1.0)  # in place: the kernel sees the new values
    flipped = model.generate_ids(PROMPTS[0], max_new_tokens=8)
    assert flipped == _torch_tokens(model, PROMPTS[0], 8)
    with torch.no_grad():
        weight.mul_(-1.0)
    model.layers[1].attn.o.weight = nn.Parameter(-weight.detach().clone(), requires_grad=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel still reads the replaced weight")

    model.float32_steps.run = refuse
    assert model.generate_ids(PROMPTS[0], max_new_tokens=8) == flipped  # torch ran the steps
    assert before != flipped  # the test could fail: the flip changes the text
    other = load_model(path)
    assert other.float32_steps.views.valid()
    down = other.layers[0].mlp.down
    other.layers[0].mlp.down = nn.Linear(down.in_features, down.out_features, bias=False)
    assert not other.float32_steps.views.valid()  # a replaced layer, not only a parameter


@needs_simd
def test_threads_sharing_one_model_get_their_own_answers(tiny) -> None:
    _, path = tiny
    model = load_model(path)
    want = [model.generate_ids(p, max_new_tokens=10) for p in PROMPTS]
    assert generate_in_threads(model, PROMPTS, 10) == want


def test_without_the_kernel_torch_runs_the_steps_on_packed_weights(tiny) -> None:
    """A CPU without AVX512 (the portable kernel stands in): torch runs the steps, its MLP
    unjoined (the SiLU fused into the gate's kernel), and still gives HF's tokens."""
    hf, path = tiny
    before = _decode.kernel()
    _decode.set_kernel("portable")
    try:
        model = load_model(path)
    finally:
        _decode.set_kernel(before)
    assert model.float32_steps is None and model.layers[0].mlp.gate_up is None
    if torch.backends.mkldnn.is_available():
        assert isinstance(model.layers[0].attn.qkv, Float32Linear)
    prompt = PROMPTS[1]
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                          eos_token_id=2, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    got = model.generate_ids(prompt, max_new_tokens=6)
    assert got == [t for t in ref if t != 2][: len(got)]
