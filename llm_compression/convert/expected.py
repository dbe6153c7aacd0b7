"""The canonical tensors (docs/naming.md) a config implies, with their shapes."""

from __future__ import annotations

from ..config import BertConfig, CausalLMConfig, CLIPConfig, TransformerConfig, WhisperConfig
from ..errors import UnsupportedFamilyError

Shapes = dict[str, tuple[int, ...]]


def _attention(p: str, c: TransformerConfig, *, qk_norm: bool) -> Shapes:
    q, kv, dim = c.n_heads * c.head_size, c.kv_heads * c.head_size, c.dim
    out: Shapes = {
        f"{p}.q.weight": (q, dim),
        f"{p}.k.weight": (kv, dim),
        f"{p}.v.weight": (kv, dim),
        f"{p}.o.weight": (dim, q),
    }
    if c.qkv_bias:
        out[f"{p}.q.bias"] = (q,)
        if c.k_bias:
            out[f"{p}.k.bias"] = (kv,)
        out[f"{p}.v.bias"] = (kv,)
    if c.out_bias:
        out[f"{p}.o.bias"] = (dim,)
    if qk_norm:
        out[f"{p}.q_norm.weight"] = (q,)
        out[f"{p}.k_norm.weight"] = (kv,)
    return out


def _norm(p: str, c: TransformerConfig) -> Shapes:
    if c.norm == "layernorm_nonparam":
        return {}
    out: Shapes = {f"{p}.weight": (c.dim,)}
    if c.norm == "layernorm":
        out[f"{p}.bias"] = (c.dim,)
    return out


def _mlp(p: str, c: TransformerConfig) -> Shapes:
    names = ("up", "gate", "down") if c.activation == "swiglu" else ("up", "down")
    out: Shapes = {}
    for name in names:
        out[f"{p}.{name}.weight"] = (c.dim, c.mlp_dim) if name == "down" else (c.mlp_dim, c.dim)
        if c.mlp_bias:
            out[f"{p}.{name}.bias"] = (c.dim,) if name == "down" else (c.mlp_dim,)
    return out


def body_shapes(prefix: str, c: TransformerConfig) -> Shapes:
    """The body tensors under ``prefix`` ("" or "vision." ...): layers then the final norm."""
    out: Shapes = {}
    for i in range(c.n_layers):
        p = f"{prefix}layers.{i}"
        out.update(_attention(f"{p}.attn", c, qk_norm=c.qk_norm))
        out.update(_norm(f"{p}.attn_norm", c))
        if c.cross_attention:
            out.update(_attention(f"{p}.cross_attn", c, qk_norm=False))
            out.update(_norm(f"{p}.cross_attn_norm", c))
        out.update(_mlp(f"{p}.mlp", c))
        out.update(_norm(f"{p}.mlp_norm", c))
    if c.final_norm:
        out.update(_norm(f"{prefix}final_norm", c))
    return out


def _clip(cfg: CLIPConfig) -> Shapes:
    v, t, patch = cfg.vision, cfg.text, cfg.patch_size
    out: Shapes = {
        "vision.patch_embed.weight": (v.dim, 3, patch, patch),
        "vision.class_embed": (v.dim,),
        "vision.pos_embed": (v.max_positions, v.dim),
        "vision.pre_norm.weight": (v.dim,),
        "vision.pre_norm.bias": (v.dim,),
    }
    out.update(body_shapes("vision.", v))
    out["vision.proj.weight"] = (cfg.projection_dim, v.dim)
    out["text.token_embed.weight"] = (cfg.vocab_size, t.dim)
    out["text.pos_embed"] = (t.max_positions, t.dim)
    out.update(body_shapes("text.", t))
    out["text.proj.weight"] = (cfg.projection_dim, t.dim)
    out["logit_scale"] = ()
    return out


def _whisper(cfg: WhisperConfig) -> Shapes:
    e, d = cfg.encoder, cfg.decoder
    out: Shapes = {
        "encoder.conv1.weight": (e.dim, cfg.n_mels, 3),
        "encoder.conv1.bias": (e.dim,),
        "encoder.conv2.weight": (e.dim, e.dim, 3),
        "encoder.conv2.bias": (e.dim,),
        "encoder.pos_embed": (e.max_positions, e.dim),
    }
    out.update(body_shapes("encoder.", e))
    out["decoder.token_embed.weight"] = (cfg.vocab_size, d.dim)
    out["decoder.pos_embed"] = (d.max_positions, d.dim)
    out.update(body_shapes("decoder.", d))
    return out


def _bert(cfg: BertConfig) -> Shapes:
    e = cfg.encoder
    out: Shapes = {
        "embed.token.weight": (cfg.vocab_size, e.dim),
        "embed.position.weight": (e.max_positions, e.dim),
        "embed.token_type.weight": (cfg.type_vocab_size, e.dim),
        "embed.norm.weight": (e.dim,),
        "embed.norm.bias": (e.dim,),
    }
    out.update(body_shapes("", e))
    return out


def _causal_lm(cfg: CausalLMConfig) -> Shapes:
    out: Shapes = {"token_embed.weight": (cfg.vocab_size, cfg.body.dim)}
    out.update(body_shapes("", cfg.body))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, cfg.body.dim)
    return out


def expected_shapes(cfg: object) -> Shapes:
    """Canonical name -> shape for every tensor a family config implies, in writing order."""
    if isinstance(cfg, CLIPConfig):
        return _clip(cfg)
    if isinstance(cfg, WhisperConfig):
        return _whisper(cfg)
    if isinstance(cfg, BertConfig):
        return _bert(cfg)
    if isinstance(cfg, CausalLMConfig):
        return _causal_lm(cfg)
    raise UnsupportedFamilyError(f"no tensor layout for config type {type(cfg).__name__}")
