"""core.native_decoder / core._decode: a group-quantized causal LM's decoder in our C kernel, checked
against float arithmetic, against its portable twin bit for bit, and against itself (a batch, a
prompt at once and token by token must give each row the same logits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_tiny import tiny_causal_lm
from hostile_helpers import generate_in_threads

from llm_compression.errors import ConfigError, InputError
from llm_compression.weightfile import write_model
from llm_compression.weightfile.groupwise import from_channel_int8, quantize_int4, quantize_int8

_decode = pytest.importorskip("llm_compression.core._decode")
from llm_compression.core import native_decoder, quantized  # noqa: E402
from llm_compression.core.native_decoder import (  # noqa: E402
    NativeDecoder,
    NativeEmbedding,
    matrix_spec,
)
from llm_compression.families.quantized import load_quantized  # noqa: E402


def _channel_int8(name: str, w: np.ndarray):
    """An int8_sym_channel matrix (a float32 scale a row) as the loader hands it over."""
    scales = np.abs(w).max(axis=1) / 127
    q = np.rint(w / scales[:, None]).clip(-127, 127).astype(np.int8)
    return from_channel_int8(q, scales.astype(np.float32))


# int8 / int4: float16 scales (a GGUF's blocks, load-time quantization); channel: float32
QUANTIZE = {"int8": quantize_int8, "int4": quantize_int4, "int8-channel": _channel_int8}
SIMD = _decode.kernel() == "avx512"
needs_simd = pytest.mark.skipif(not SIMD, reason="this CPU lacks AVX512-VNNI")


@pytest.fixture
def portable():
    """The portable kernel inside the block, the CPU's own after it."""
    before = _decode.kernel()
    _decode.set_kernel("portable")
    yield
    _decode.set_kernel(before)


def _matmul(spec: tuple, x: np.ndarray) -> np.ndarray:
    out = np.full((x.shape[0], spec[1]), np.nan, np.float32)
    _decode.matmul(spec, np.ascontiguousarray(x, np.float32), x.shape[0], out)
    return out


@pytest.mark.parametrize("dtype", list(QUANTIZE))
def test_matmul_follows_float_arithmetic(dtype: str) -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((13, 192)).astype(np.float32)
    rows[3] *= 1e-6  # float16 scales of ~1e-8: subnormal, widened exactly
    w = QUANTIZE[dtype]("w", rows)
    x = rng.standard_normal((3, 192)).astype(np.float32) * [[1.0], [1e-3], [50.0]]
    want = x @ w.dequantize().T  # the stored weights exactly, float activations
    got = _matmul(matrix_spec(w), x)
    # the only rounding: activations to int8 a group of 32 (half a step of max|x| / 127)
    assert np.linalg.norm(got - want) <= 0.01 * np.linalg.norm(want)
    scale = np.abs(x) @ np.abs(w.dequantize()[3])  # the tiny row, to its own magnitude
    assert (np.abs(got[:, 3] - want[:, 3]) <= 0.01 * scale).all()
    assert np.abs(got - want).max() > 0  # it did quantize: not a float32 product in disguise


@needs_simd
@pytest.mark.parametrize("dtype", list(QUANTIZE))
def test_portable_kernel_equals_avx512_bit_for_bit(dtype: str, portable) -> None:
    rng = np.random.default_rng(2)
    w = QUANTIZE[dtype]("w", rng.standard_normal((37, 320)).astype(np.float32))
    x = rng.standard_normal((11, 320)).astype(np.float32)  # a block of 8 rows and one of 3
    spec = matrix_spec(w)
    slow = _matmul(spec, x)
    _decode.set_kernel("avx512")
    np.testing.assert_array_equal(_matmul(spec, x), slow)


def test_zero_activations_give_zero_and_bad_specs_are_refused() -> None:
    w = quantize_int8("w", np.ones((4, 64), np.float32))
    assert not _matmul(matrix_spec(w), np.zeros((1, 64))).any()
    kind, rows, cols, q, scales, offsets = matrix_spec(w)
    with pytest.raises(ValueError, match="multiple of 32"):
        _decode.matmul((kind, rows, 80, q, scales, offsets), np.zeros(80, np.float32), 1,
                       np.zeros(4, np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="bytes"):  # the weights shorter than rows x cols
        _decode.matmul((kind, rows * 2, cols, q, scales, offsets), np.zeros(64, np.float32), 1,
                       np.zeros(8, np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="bytes"):
        _decode.matmul(matrix_spec(w), np.zeros(64, np.float32), 1, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="float16 or float32"):
        _decode.matmul((kind, rows, cols, q, scales.astype(np.float64), offsets),
                       np.zeros(64, np.float32), 1, np.zeros(4, np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="one a group"):  # 3 scales for 4 rows of 2 groups
        _decode.matmul((kind, rows, cols, q, scales.reshape(-1)[:3], offsets),
                       np.zeros(64, np.float32), 1, np.zeros(4, np.float32))  # fmt: skip
    w4 = quantize_int4("w", np.ones((4, 64), np.float32))
    kind, rows, cols, q, scales, offsets = matrix_spec(w4)
    with pytest.raises(ValueError, match="offsets must match"):
        _decode.matmul((kind, rows, cols, q, scales, offsets.astype(np.float32)),
                       np.zeros(64, np.float32), 1, np.zeros(4, np.float32))  # fmt: skip


def test_channel_scales_are_passed_once_a_row() -> None:
    """An int8_sym_channel matrix's row scale, repeated in every group by the loader, reaches
    the kernel once a row; the result is the one of the scales a group."""
    rng = np.random.default_rng(4)
    w = _channel_int8("w", rng.standard_normal((20, 128)).astype(np.float32))
    spec = matrix_spec(w)
    assert spec[4].shape == (20,) and spec[4].dtype == np.float32
    per_group = (*spec[:4], np.ascontiguousarray(w.scales, np.float32), None)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_array_equal(_matmul(spec, x), _matmul(per_group, x))


@pytest.fixture(scope="module", params=[("llama", True), ("olmo2", False)], ids=str)
def stored(request, tmp_path_factory):
    """A causal LM the kernel runs: inputs multiples of 64 (width 128, two heads of 64)."""
    _, cfg, state = tiny_causal_lm(request.param[0], tie=request.param[1], heads=2, width=128)
    path = tmp_path_factory.mktemp("n") / "m.parquet"
    return write_model(path, {k: v.numpy() for k, v in state.items()}, config=cfg,
                       dtype="float32")  # fmt: skip


def _native(path, dtype: str):
    model = load_quantized(path, dtype)
    if not SIMD:
        pytest.skip("this CPU lacks AVX512-VNNI: the ORT graph runs instead")
    assert isinstance(model.decoder_graph, NativeDecoder)
    return model


@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.02), ("int4", 0.02)])
def test_logits_follow_float_activations(stored, dtype: str, tolerance: float, monkeypatch):
    """Against ORT's graph on the same stored weights with float32 activations (accuracy level
    1): what differs is our int8 activations only."""
    model = _native(stored, dtype)
    monkeypatch.setattr(quantized, "ACCURACY_LEVEL", 1)
    reference = load_quantized(stored, dtype, kernel="onnxruntime")
    ids = torch.tensor([[5, 17, 33, 8, 61, 9, 4, 4, 70]])
    with torch.inference_mode():
        got, want = model.logits(ids), reference.logits(ids)
    assert got.shape == want.shape == (1, 9, 97)
    assert (got - want).norm() <= tolerance * want.norm()


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_prompt_at_once_equals_token_by_token_and_batch_equals_alone(stored, dtype: str):
    """Each row is quantized and attended alone: the logits are the same bit for bit however
    the tokens are grouped into calls and rows."""
    model = _native(stored, dtype)
    ids = [5, 17, 33, 8, 61, 9]
    with torch.inference_mode():
        whole = model.logits(torch.tensor([ids]))[0]
        cache = model.new_cache(1, len(ids))
        for pos, token in enumerate(ids):
            step = model.logits(torch.tensor([[token]]), cache=cache, start_pos=pos)[0, -1]
            torch.testing.assert_close(step, whole[pos], rtol=0, atol=0)
    prompts = [ids, [3, 4], [7, 8, 9, 10]]
    together = model.generate_ids(prompts, max_new_tokens=8)
    assert together == [model.generate_ids(p, max_new_tokens=8) for p in prompts]


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_portable_kernel_runs_the_model_bit_for_bit(stored, dtype: str) -> None:
    """Matmuls and attention (intrinsics on the fast kernel, plain C on the portable one) give
    the same bits, over 40 positions."""
    model = _native(stored, dtype)
    ids = (torch.arange(40) * 37 % 97).view(1, 40)
    with torch.inference_mode():
        fast = model.logits(ids)
        _decode.set_kernel("portable")
        try:
            slow = model.logits(ids)
        finally:
            _decode.set_kernel("avx512")
    torch.testing.assert_close(slow, fast, rtol=0, atol=0)


def test_threads_sharing_one_model_get_their_own_answers(stored) -> None:
    model = _native(stored, "int8")
    prompts = [[5, 17, 33], [9, 9, 2, 40], [61], [7, 8, 9, 10, 11]]
    want = [model.generate_ids(p, max_new_tokens=12) for p in prompts]
    assert generate_in_threads(model, prompts, 12) == want


def test_bad_calls_are_typed_errors(stored) -> None:
    model = _native(stored, "int8")
    decoder = model.decoder_graph
    cache = model.new_cache(1, 4)
    pairs = [(layer.k, layer.v) for layer in cache]
    embeds = torch.zeros(1, 5, 128)
    with pytest.raises(InputError, match="KV cache holds 4"):
        decoder.run(embeds, pairs, [0], last_only=True)
    with pytest.raises(InputError, match="contiguous float32"):
        decoder.run(embeds[:, :2], [(k.transpose(2, 3), v) for k, v in pairs], [0], last_only=True)
    with pytest.raises(ConfigError, match="kernel='cuda'"):
        load_quantized(stored, "int8", kernel="cuda")


def test_narrow_models_run_and_what_the_kernel_cannot_run_is_named(tmp_path, monkeypatch):
    _, cfg, state = tiny_causal_lm("llama", tie=True, heads=2)  # width 32: one group, heads of 16
    path = write_model(tmp_path / "m.parquet", {k: v.numpy() for k, v in state.items()},
                       config=cfg, dtype="float32")  # fmt: skip
    model = _native(path, "int8")
    monkeypatch.setattr(quantized, "ACCURACY_LEVEL", 1)
    graph = load_quantized(path, "int8", kernel="onnxruntime")
    assert not isinstance(graph.decoder_graph, NativeDecoder)
    ids = torch.tensor([[1, 5, 9, 3, 40, 41]])
    with torch.inference_mode():
        got, want = model.logits(ids), graph.logits(ids)
    assert (got - want).norm() <= 0.03 * want.norm()
    mats = {"token_embed": quantize_int8("t", np.ones((97, 32), np.float32))}
    why = native_decoder.why_not(cfg.body, mats, "token_embed")
    assert why is not None and ("layers.0.attn.qkv" in why or "AVX512" in why)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_tied_table_is_held_once_and_looks_up_the_stored_values(tmp_path, dtype: str) -> None:
    _, cfg, state = tiny_causal_lm("llama", tie=True, heads=2, width=128)
    path = write_model(tmp_path / "m.parquet", {k: v.numpy() for k, v in state.items()},
                       config=cfg, dtype="float32")  # fmt: skip
    model = _native(path, dtype)
    assert isinstance(model.token_embed, NativeEmbedding)  # no second (QuantEmbedding) copy
    table = QUANTIZE[dtype]("t", state["token_embed.weight"].numpy()).dequantize()
    ids = torch.tensor([[0, 5, 96], [96, 1, 1]])
    got = model.token_embed(ids)
    assert got.shape == (2, 3, 128)
    np.testing.assert_array_equal(got.numpy(), table[ids.numpy()])
    with pytest.raises(InputError, match=r"0 \.\. 96"):
        model.token_embed(torch.tensor([[97]]))
    with pytest.raises(InputError, match="outside the vocabulary"):  # generate checks first
        model.generate_ids([3, -1], max_new_tokens=2)


def _tiny_specs(rng) -> tuple:
    """One layer of width 32 (one head of 32, an MLP of 32), as ``create`` takes it."""
    shapes = {"qkv": (96, 32), "o": (32, 32), "gate_up": (64, 32), "down": (32, 32)}
    mats = {
        k: quantize_int8(k, rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()
    }
    norm = np.ones(32, np.float32)
    return tuple(matrix_spec(mats[k]) for k in shapes) + (norm, norm, None, None)


def _tiny_create(rng, layers):
    """``create`` of one-layer width-32 models (head of 40 rows, 8 positions) over ``layers``."""
    dims, table = (1, 32, 1, 1, 32, 32, 8), np.zeros((8, 16), np.float32)
    head = matrix_spec(quantize_int8("head", rng.standard_normal((40, 32)).astype(np.float32)))
    return _decode.create(dims, 1e-6, 0, 1, table, table, np.ones(32, np.float32), head, layers)


def test_create_copies_the_weights_and_lets_each_layer_go() -> None:
    """``create`` repacks every matrix into its own tiles: the arrays handed over are free to go
    as soon as their layer is read (a generator of layers keeps the loading peak at one model)."""
    import weakref

    rng = np.random.default_rng(5)
    refs = []

    def layers():
        layer = _tiny_specs(rng)
        refs.extend(weakref.ref(spec[3]) for spec in layer[:4])
        yield layer

    model = _tiny_create(rng, layers())
    assert refs and all(r() is None for r in refs)  # the stored values were copied, not held
    with pytest.raises(ValueError, match="1 entries expected"):
        _tiny_create(rng, iter([_tiny_specs(rng)] * 2))
    with pytest.raises(ValueError, match="1 entries expected"):
        _tiny_create(rng, [])
    assert model is not None


def test_absurd_sizes_are_refused_before_any_memory_is_touched() -> None:
    """Sizes whose byte counts overflow could match a small buffer after wrapping: refused."""
    rng = np.random.default_rng(6)
    kind, rows, cols, q, scales, offsets = matrix_spec(quantize_int8("w", np.ones((4, 64))))
    with pytest.raises(ValueError, match="2\\^63"):
        _decode.matmul((kind, 2**61, cols, q, scales, offsets), np.zeros(64, np.float32), 1,
                       np.zeros(4, np.float32))  # fmt: skip
    model = _tiny_create(rng, [_tiny_specs(rng)])
    x, past, wanted = np.zeros(32, np.float32), np.zeros(1, np.int32), np.zeros(1, np.int64)
    caches, logits = [np.zeros(32, np.float32)] * 2, np.zeros(40, np.float32)
    _decode.step(model, x, 1, 1, past, caches, 1, wanted, 1, logits)  # the sizes that fit
    with pytest.raises(ValueError, match="overflow"):  # (2^57 + 1) x 32 x 4 bytes wraps to 128
        _decode.step(model, x, 1, 1, past, caches, 2**57 + 1, wanted, 1, logits)
    with pytest.raises(ValueError, match="bytes"):
        _decode.step(model, x, 1, 1, past, caches, 2, wanted, 1, logits)
