"""The shared core against a naive reference, for every variant in TransformerConfig."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_compression.config import TransformerConfig
from llm_compression.core import KVCache, Transformer
from llm_compression.errors import InputError

VARIANTS = {
    "clip_vision": dict(activation="quick_gelu", max_positions=16),
    "clip_text": dict(activation="quick_gelu", causal=True, max_positions=16),
    "bert": dict(norm_placement="post", norm_eps=1e-12, max_positions=16, final_norm=False),
    "whisper_enc": dict(k_bias=False, positions="sinusoidal", max_positions=16),
    "whisper_dec": dict(k_bias=False, causal=True, cross_attention=True, max_positions=16),
    "llama_gqa": dict(
        norm="rmsnorm", norm_eps=1e-6, activation="swiglu", causal=True, positions="rotary",
        max_positions=64, rope_theta=500.0, n_kv_heads=2, qkv_bias=False, out_bias=False,
        mlp_bias=False,
    ),
    "olmo1": dict(
        norm="layernorm_nonparam", activation="swiglu", causal=True, positions="rotary",
        max_positions=64, clip_qkv=0.3, qkv_bias=False, out_bias=False, mlp_bias=False,
    ),
    "olmo2": dict(
        norm="rmsnorm", norm_placement="sandwich_post", qk_norm=True, activation="swiglu",
        causal=True, positions="rotary", max_positions=64, qkv_bias=False, out_bias=False,
        mlp_bias=False,
    ),
    "gelu_tanh_headdim": dict(activation="gelu_tanh", head_dim=12, qkv_bias=True, max_positions=8),
    "cross_rotary_mqa": dict(
        cross_attention=True, causal=True, positions="rotary", n_kv_heads=1, max_positions=64,
        norm="rmsnorm", activation="swiglu",
    ),
}  # fmt: skip


def make_cfg(name: str) -> TransformerConfig:
    return TransformerConfig(dim=32, n_layers=2, n_heads=4, mlp_dim=48, **VARIANTS[name])


def random_model(cfg: TransformerConfig, seed: int = 0) -> Transformer:
    """Build on meta, then assign random weights (norm weights near 1)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, p in model.state_dict().items():
        w = torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 0.2)
        weights[name] = w + 1 if "norm" in name and name.endswith("weight") else w
    model.load_state_dict(weights, assign=True, strict=True)
    return model.eval()


# -- naive reference ---------------------------------------------------------------------------


def ref_norm(cfg, mod, x):
    if cfg.norm == "rmsnorm":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * mod.weight
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    y = (x - mu) / torch.sqrt(var + cfg.norm_eps)
    return y if cfg.norm == "layernorm_nonparam" else y * mod.weight + mod.bias


def ref_rotate(x, positions, theta):
    """Rotate pairs (i, i + D/2) by angle pos * theta^(-2i/D)."""
    D = x.shape[-1]
    i = torch.arange(D // 2, dtype=torch.float64)
    angle = positions[:, None].double() * theta ** (-2 * i / D)  # (T, D/2)
    cos, sin = angle.cos().float(), angle.sin().float()
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def ref_attention(cfg, attn, x, src, positions, key_mask, cross):
    def lin(layer, t):
        return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)

    q, k, v = lin(attn.q, x), lin(attn.k, src), lin(attn.v, src)
    if cfg.clip_qkv is not None:
        q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    if cfg.qk_norm and not cross:
        rms = TransformerConfig(dim=1, n_layers=1, n_heads=1, mlp_dim=1, norm="rmsnorm",
                                norm_eps=cfg.norm_eps, max_positions=1)  # fmt: skip
        q, k = ref_norm(rms, attn.q_norm, q), ref_norm(rms, attn.k_norm, k)
    B, T, S, D = x.shape[0], x.shape[1], src.shape[1], cfg.head_dim
    q = q.view(B, T, cfg.n_heads, D).transpose(1, 2)
    k = (
        k.view(B, S, cfg.n_kv_heads, D)
        .transpose(1, 2)
        .repeat_interleave(cfg.n_heads // cfg.n_kv_heads, 1)
    )
    v = (
        v.view(B, S, cfg.n_kv_heads, D)
        .transpose(1, 2)
        .repeat_interleave(cfg.n_heads // cfg.n_kv_heads, 1)
    )
    if cfg.positions == "rotary" and not cross:
        q, k = ref_rotate(q, positions, cfg.rope_theta), ref_rotate(k, positions, cfg.rope_theta)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, S)
    allowed = torch.ones(T, S, dtype=torch.bool)
    if cfg.causal and not cross:
        allowed = torch.tril(allowed)
    if key_mask is not None and not cross:
        allowed = allowed & key_mask[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
    return lin(attn.o, y)


def ref_mlp(cfg, mlp, x):
    def lin(layer, t):
        return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)

    if cfg.activation == "swiglu":
        return lin(mlp.down, F.silu(lin(mlp.gate, x)) * lin(mlp.up, x))
    act = {
        "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
        "gelu_tanh": lambda t: (
            0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))
        ),
        "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
    }[cfg.activation]
    return lin(mlp.down, act(lin(mlp.up, x)))


def reference(model: Transformer, x, *, key_mask=None, memory=None):
    cfg = model.cfg
    positions = torch.arange(x.shape[1])

    def sub(x, norm, f):
        if cfg.norm_placement == "pre":
            return x + f(ref_norm(cfg, norm, x))
        if cfg.norm_placement == "post":
            return ref_norm(cfg, norm, x + f(x))
        return x + ref_norm(cfg, norm, f(x))

    for layer in model.layers:
        x = sub(
            x,
            layer.attn_norm,
            lambda h, a=layer.attn: ref_attention(cfg, a, h, h, positions, key_mask, False),
        )
        if cfg.cross_attention:
            x = sub(x, layer.cross_attn_norm,
                    lambda h, a=layer.cross_attn: ref_attention(cfg, a, h, memory, positions, None, True))  # fmt: skip
        x = sub(x, layer.mlp_norm, lambda h, m=layer.mlp: ref_mlp(cfg, m, h))
    return ref_norm(cfg, model.final_norm, x) if cfg.final_norm else x


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_matches_reference(name):
    cfg = make_cfg(name)
    model = random_model(cfg)
    x = torch.randn(2, 7, 32)
    memory = torch.randn(2, 5, 32) if cfg.cross_attention else None
    with torch.inference_mode():
        ours = model(x, memory=memory)
    torch.testing.assert_close(ours, reference(model, x, memory=memory), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["bert", "clip_text", "llama_gqa", "olmo2"])
def test_padding_mask_matches_reference(name):
    cfg = make_cfg(name)
    model = random_model(cfg)
    x = torch.randn(3, 6, 32)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    with torch.inference_mode():
        ours = model(x, mask=keep[:, None, None, :])
    ref = reference(model, x, key_mask=keep)
    torch.testing.assert_close(ours[keep], ref[keep], atol=2e-5, rtol=1e-4)
    assert torch.isfinite(ours).all()  # padded rows stay finite (no all-masked softmax)


@pytest.mark.parametrize(
    "name", ["llama_gqa", "olmo1", "olmo2", "clip_text", "whisper_dec", "cross_rotary_mqa"]
)
def test_kv_cache_incremental_equals_full(name):
    cfg = make_cfg(name)
    model = random_model(cfg)
    x = torch.randn(2, 9, 32)
    memory = torch.randn(2, 5, 32) if cfg.cross_attention else None
    with torch.inference_mode():
        full = model(x, memory=memory)
        cache = model.new_cache(2, 12)
        parts = [model(x[:, :4], cache=cache, start_pos=0, memory=memory)]
        cross = cache[0].cross
        parts.append(model(x[:, 4:6], cache=cache, start_pos=4, memory=memory))  # a chunk of 2
        for t in range(6, 9):  # single steps; cross K/V reused without passing memory again
            parts.append(model(x[:, t : t + 1], cache=cache, start_pos=t))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=2e-5, rtol=1e-4)
    if cfg.cross_attention:
        assert cache[0].cross is cross  # computed once per encoder output
        assert all(t.is_contiguous() for t in cross)  # each step reads a head's rows in a run


def test_cross_attention_recomputed_for_new_memory():
    model = random_model(make_cfg("whisper_dec"))
    x, m1, m2 = torch.randn(1, 3, 32), torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with torch.inference_mode():
        cache = model.new_cache(1, 8)
        model(x, cache=cache, memory=m1)
        second = model(x, cache=cache, memory=m2)
        torch.testing.assert_close(second, model(x, memory=m2))


def test_cross_attention_without_memory_raises():
    model = random_model(make_cfg("whisper_dec"))
    with pytest.raises(InputError, match="memory"), torch.inference_mode():
        model(torch.randn(1, 3, 32))


def test_kv_cache_overflow_raises():
    cache = KVCache(1, 2, 4, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(InputError, match="larger max_len"):
        cache.update(3, torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))


def test_meta_build_creates_no_data_and_assign_fills():
    cfg = make_cfg("olmo2")
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert list(model.buffers()) == []  # nothing with values made in __init__
    model = random_model(cfg)
    assert not any(p.is_meta for p in model.parameters())
    names = set(model.state_dict())
    assert "layers.0.attn.q_norm.weight" in names and "layers.1.mlp.gate.weight" in names
    assert "layers.0.attn.q.bias" not in names


def test_canonical_names_for_whisper_decoder():
    names = set(random_model(make_cfg("whisper_dec")).state_dict())
    assert {
        "layers.0.cross_attn.q.bias",
        "layers.0.cross_attn_norm.weight",
        "final_norm.bias",
    } <= names
    assert "layers.0.attn.k.bias" not in names and "layers.0.cross_attn.k.bias" not in names
    assert "layers.0.attn.v.bias" in names


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close(dtype):
    model = random_model(make_cfg("llama_gqa"))
    x = torch.randn(1, 5, 32)
    with torch.inference_mode():
        ref = model(x)
        half = model.to(dtype)(x.to(dtype))
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), ref, atol=0.1, rtol=0.05)


def test_rotary_tables_cached_per_dtype_and_grown():
    model = random_model(make_cfg("llama_gqa"))
    rot = model.rotary
    cos, _ = rot(0, 4, "cpu", torch.float32)
    assert rot(0, 4, "cpu", torch.float32)[0].data_ptr() == cos.data_ptr()
    long_cos, _ = rot(100, 50, "cpu", torch.float32)  # beyond max_positions: the table grows
    assert long_cos.shape == (50, 8)
    assert rot(0, 4, "cpu", torch.bfloat16)[0].dtype == torch.bfloat16
