"""core.native_encoder / core._decode's encode: a BERT body's int8 pass in our C kernel (decision
0016), on a tiny random BERT: close to float32, each row independent of its batch and of where
its padding lies, the portable kernel's bits, threads sharing one model, typed refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from provider_helpers import as_built, tiny_bert_file

from llm_compression.core import compute, compute_layers, native_encoder
from llm_compression.core.native_encoder import why_not
from llm_compression.errors import InputError
from llm_compression.loader import load_model

_decode = pytest.importorskip("llm_compression.core._decode")
needs_simd = pytest.mark.skipif(_decode.kernel() != "avx512", reason="this CPU lacks AVX512-VNNI")
FLAGS = native_encoder.LAYER_NORM | native_encoder.NORM_AFTER | native_encoder.GELU


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    return tiny_bert_file(tmp_path_factory)


@pytest.fixture(scope="module")
def models(bert_file):
    return load_model(bert_file), load_model(bert_file, dtype="int8")


@pytest.fixture(scope="module")
def int8_blocks(bert_file):
    """The float32 model's blocks with their linears as ``Int8Rows``: the int8 rows loading
    hands the kernel."""
    blocks = as_built(bert_file).layers  # torch's own linears (load_model packs float32's)
    compute._replace_linears(blocks, compute_layers.Int8Rows, None)
    return blocks


def _batch(lengths: list[int], T: int, seed: int = 0):
    ids = torch.randint(
        1000, 30000, (len(lengths), T), generator=torch.Generator().manual_seed(seed)
    )
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@needs_simd
def test_int8_bert_runs_in_the_kernel_close_to_float32(models):
    ref, model = models
    assert model.native is not None and why_not(model.cfg) is None
    ids, mask = _batch([12, 5, 1, 9], 12)
    a, b = ref.encode(ids, mask), model.encode(ids, mask)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert cos.min() >= 0.995, cos


def _fake_quantized(x: torch.Tensor) -> torch.Tensor:
    """x quantized to int8 a group of 32 (scale max|x| / 127, ties to even) and back."""
    g = x.reshape(*x.shape[:-1], -1, 32)
    top = g.abs().amax(dim=-1, keepdim=True)
    q = torch.round(g * torch.where(top > 0, 127 / top, 0)).clamp(-127, 127)
    return (q * (top / 127)).reshape(x.shape)


def _linear(h: torch.Tensor, spec: tuple, bias) -> torch.Tensor:
    weight = torch.from_numpy(spec[3].astype(np.float32) * spec[4][:, None])
    return _fake_quantized(h) @ weight.T + torch.from_numpy(bias)


def _reference(cfg, blocks, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The kernel's arithmetic in torch over ``blocks`` (``int8_blocks``): their int8 weights,
    activations quantized a group of 32, LayerNorm after each residual, exact GELU, each row
    over its first lengths[b] keys."""
    B, T, C = x.shape
    H, D = cfg.n_heads, cfg.head_dim
    keys_seen = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    norm = torch.nn.functional.layer_norm
    for block in blocks:
        qkv, o, up, down, n1, n2, _, _, b1, b2, bqkv, bo, bup, bdown = native_encoder.layer_entry(
            block
        )
        q, k, v = _linear(x, qkv, bqkv).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        score = (q @ k.transpose(-1, -2)) / D**0.5
        score = score.masked_fill(~keys_seen[:, None, None, :], float("-inf"))
        attn = (score.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = norm(
            x + _linear(attn, o, bo), (C,), torch.from_numpy(n1), torch.from_numpy(b1), cfg.norm_eps
        )
        hidden = torch.nn.functional.gelu(_linear(x, up, bup))
        y = _linear(hidden, down, bdown)
        x = norm(x + y, (C,), torch.from_numpy(n2), torch.from_numpy(b2), cfg.norm_eps)
    return x


@needs_simd
def test_the_kernel_computes_what_its_arithmetic_says(models, int8_blocks):
    """Against the same int8 arithmetic in torch: only float rounding apart (a wrong GELU, a
    causal mask or a dropped bias is off by far more)."""
    _, model = models
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(5))
    lengths = [9, 4, 1]
    mask = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    got = model.native.run(x, mask)
    want = _reference(model.cfg, int8_blocks, x, lengths)
    for b, n in enumerate(lengths):
        assert (got[b, :n] - want[b, :n]).abs().max() < 1e-4, (got[b, :n] - want[b, :n]).abs().max()


@needs_simd
def test_a_row_is_the_same_alone_and_in_any_batch(models):
    _, model = models
    ids, mask = _batch([7, 12, 3], 12, seed=1)
    together = model.encode(ids, mask)
    for r, n in enumerate([7, 12, 3]):
        alone = model.encode(ids[r : r + 1, :n], mask[r : r + 1, :n])
        assert torch.equal(alone[0], together[r])


@needs_simd
def test_padding_anywhere_gives_the_real_tokens_the_same_output(models):
    _, model = models
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(2))
    keep = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]]).bool()
    out = model.native.run(x, keep[:, None, None, :])
    for r in range(2):
        alone = model.native.run(x[r : r + 1, keep[r]], None)
        assert torch.equal(out[r, keep[r]], alone[0])


@needs_simd
def test_the_portable_kernel_gives_the_same_bits(models):
    _, model = models
    ids, mask = _batch([12, 4], 12, seed=3)
    fast = model.encode(ids, mask)
    _decode.set_kernel("portable")
    try:
        slow = model.encode(ids, mask)
    finally:
        _decode.set_kernel("avx512")
    assert torch.equal(fast, slow)


@needs_simd
def test_the_kernel_holds_the_only_int8_copy(models):
    from llm_compression.core.compute import compute_bytes

    _, model = models
    assert len(model.layers) == 0  # the torch layers went once copied
    enc = model.cfg
    # int8 values, a float32 scale and bias a row: q/k/v, o and up take dim inputs, down mlp_dim
    per_block = (4 * enc.dim + enc.mlp_dim) * (enc.dim + 8) + enc.dim * (enc.mlp_dim + 8)
    per_block += 4 * enc.dim * 4  # two LayerNorms' weights and biases, float32
    assert model.native.nbytes == enc.n_layers * per_block
    assert compute_bytes(model) >= model.native.nbytes


@needs_simd
def test_the_kernel_takes_int8_rows_torch_never_packed(bert_file, monkeypatch):
    """The body's linears become plain int8 rows for the kernel: torch's int8 packing (which
    holds each matrix twice while loading) never runs for them."""

    packed = []
    monkeypatch.setattr(
        compute_layers.Int8Linear, "_pack", lambda self, w, b: packed.append(w.shape)
    )
    model = load_model(bert_file, dtype="int8")
    assert model.native is not None and packed == []


@needs_simd
def test_threads_share_one_model(models):
    _, model = models
    batches = [_batch([12 - i, 3 + i], 12, seed=10 + i) for i in range(6)]
    serial = [model.encode(*b) for b in batches]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = model.encode(*batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], serial[i]) for i in range(6))


@needs_simd
def test_a_mask_of_the_wrong_shape_is_an_input_error(models):
    _, model = models
    with pytest.raises(InputError, match="mask"):
        model.native.run(torch.zeros(2, 5, 32), torch.ones(2, 4, dtype=torch.bool))


@needs_simd
def test_why_not_names_what_the_kernel_does_not_run(models):
    ref, _ = models
    from dataclasses import replace

    cfg = ref.cfg
    assert "norm_placement" in why_not(replace(cfg, norm_placement="pre", final_norm=False))
    assert "causal" in why_not(replace(cfg, causal=True))
    assert "activation" in why_not(replace(cfg, activation="quick_gelu"))
    assert "multiple of 32" in why_not(replace(cfg, dim=48, n_heads=4))


def _entries(blocks) -> list[tuple]:
    return [native_encoder.layer_entry(block) for block in blocks]


def _dims(cfg) -> tuple:
    return (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim,
            cfg.max_positions)  # fmt: skip


@needs_simd
def test_encode_checks_its_inputs(models):
    _, model = models
    md, x = model.native._model, np.zeros((2, 5, 32), np.float32)
    for lengths in ([0, 5], [5, 6]):
        with pytest.raises(ValueError, match="length"):
            _decode.encode(md, x, 2, 5, np.array(lengths, np.int32))
    with pytest.raises(ValueError, match="x holds"):
        _decode.encode(md, x, 2, 4, np.array([4, 4], np.int32))
    with pytest.raises(ValueError, match="1 <= B"):
        _decode.encode(md, x, 0, 5, np.array([], np.int32))
    with pytest.raises(ValueError, match="positions"):
        _decode.encode(md, np.zeros((1, 600, 32), np.float32), 1, 600, np.array([600], np.int32))
    with pytest.raises(ValueError, match="no step"):
        _decode.step(md, x, 2, 5, None, None, 5, None, 1, None)


@needs_simd
def test_create_refuses_what_does_not_fit(models, int8_blocks):
    cfg, entries = models[0].cfg, _entries(int8_blocks)
    enc = FLAGS | native_encoder.ENCODER

    def create(flags=enc, layers=entries, head=None, final=None):
        return _decode.create(_dims(cfg), 1e-12, flags, 1, None, None, final, head, layers)

    assert create() is not None
    with pytest.raises(ValueError, match="flags"):
        create(flags=enc | 1)  # OLMo-2's post norms and BERT's norms after: one or the other
    with pytest.raises(ValueError, match="no head"):
        create(head=entries[0][1], final=np.ones(32, np.float32))
    no_norm = [(*e[:4], None, *e[5:]) for e in entries]
    with pytest.raises(ValueError, match="attn_norm is required"):
        create(layers=no_norm)
    no_bias = [(*e[:8], None, *e[9:]) for e in entries]
    with pytest.raises(ValueError, match="LayerNorm needs"):
        create(layers=no_bias)
    short = [(*e[:10], e[10][:-1], *e[11:]) for e in entries]
    with pytest.raises(ValueError, match="qkv bias"):
        create(layers=short)
    with pytest.raises(ValueError, match="a \\(weight, bias\\) pair for LayerNorm"):
        create(flags=FLAGS, head=entries[0][1], final=np.ones(32, np.float32))
    final = (np.ones(32, np.float32), np.zeros(32, np.float32))  # LayerNorm's weight and bias
    decoder = create(flags=FLAGS, head=entries[0][1], final=final)
    with pytest.raises(ValueError, match="an encoder"):
        _decode.encode(decoder, np.zeros((1, 2, 32), np.float32), 1, 2, np.array([2], np.int32))
