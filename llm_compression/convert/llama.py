"""Llama-family causal LMs: Hugging Face ``LlamaForCausalLM`` folders and llama.cpp GGUF files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import CausalLMConfig, TransformerConfig
from ..errors import ConversionError
from .common import gated_activation, optional_int, require, rope_theta, token_ids
from .gguf_reader import GGUFFile, unpermute_rotary
from .mapping import Item, Target

_HF_LAYER = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
}
# Llama's norms: before attention and before the MLP.
HF_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}


def causal_lm_map(
    cfg: CausalLMConfig, norms: dict[str, str], extra: dict[str, str]
) -> dict[str, Target]:
    """The Hugging Face ``*ForCausalLM`` name map shared by Llama and OLMo.

    ``norms``: per-layer norm module -> canonical norm; ``extra``: more per-layer modules.
    A checkpoint of a tied model may still carry ``lm_head.weight``: it is dropped.
    """
    out: dict[str, Target] = {
        "model.embed_tokens.weight": "token_embed.weight",
        "model.norm.weight": "final_norm.weight",
        "lm_head.weight": None if cfg.tie_embeddings else "lm_head.weight",
        "model.rotary_emb.inv_freq": None,  # buffer in old checkpoints
    }
    for src, dst in (_HF_LAYER | extra).items():
        for kind in ("weight", "bias"):
            out[f"model.layers.{{}}.{src}.{kind}"] = f"layers.{{}}.{dst}.{kind}"
    for src, dst in norms.items():
        out[f"model.layers.{{}}.{src}.weight"] = f"layers.{{}}.{dst}.weight"
    out["model.layers.{}.self_attn.rotary_emb.inv_freq"] = None
    return out


def hf_map(cfg: CausalLMConfig) -> dict[str, Target]:
    return causal_lm_map(cfg, HF_NORMS, {})


def causal_lm_config(cfg: dict[str, Any], where: str, family: str, **body: Any) -> CausalLMConfig:
    """CausalLMConfig from a ``*ForCausalLM`` config.json; ``body`` sets norm and friends."""
    dim = int(require(cfg, "hidden_size", where))
    heads = int(require(cfg, "num_attention_heads", where))
    attention_bias = bool(cfg.get("attention_bias", False))
    head_dim = cfg.get("head_dim")
    body_cfg = TransformerConfig(
        dim=dim,
        n_layers=int(require(cfg, "num_hidden_layers", where)),
        n_heads=heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=None if head_dim in (None, dim // heads) else int(head_dim),
        mlp_dim=int(require(cfg, "intermediate_size", where)),
        activation=gated_activation(cfg.get("hidden_act", "silu"), where),
        causal=True,
        positions="rotary",
        max_positions=int(cfg.get("max_position_embeddings") or 2048),
        rope_theta=rope_theta(cfg, where),
        qkv_bias=attention_bias,
        k_bias=attention_bias,
        out_bias=attention_bias,
        **body,
    )
    return CausalLMConfig(
        body=body_cfg,
        vocab_size=int(require(cfg, "vocab_size", where)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=optional_int(cfg.get("bos_token_id")),
        eos_token_ids=token_ids(cfg.get("eos_token_id")),
        pad_token_id=optional_int(cfg.get("pad_token_id")),
        family=family,
    )


def hf_config(cfg: dict[str, Any], folder: Path) -> CausalLMConfig:
    where = str(folder / "config.json")
    return causal_lm_config(
        cfg, where, "llama", norm="rmsnorm", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
    )  # fmt: skip


GGUF_MAP: dict[str, Target] = {
    "token_embd.weight": "token_embed.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "layers.{}.attn_norm.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.mlp_norm.weight",
    **{
        f"blk.{{}}.{src}.{kind}": f"layers.{{}}.{dst}.{kind}"
        for src, dst in {
            "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v", "attn_output": "attn.o",
            "ffn_gate": "mlp.gate", "ffn_up": "mlp.up", "ffn_down": "mlp.down",
        }.items()
        for kind in ("weight", "bias")
    },
}  # fmt: skip


def _f32(value: Any) -> float:
    """A GGUF float32 as the shortest decimal that rounds to it (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


def gguf_config(gguf: GGUFFile) -> CausalLMConfig:
    """CausalLMConfig from a llama-architecture GGUF's metadata."""
    arch = gguf.require("general.architecture")
    key = lambda name: gguf.require(f"{arch}.{name}")  # noqa: E731
    if (
        "rope_freqs.weight" in gguf.shapes
        or gguf.get(f"{arch}.rope.scaling.type", "none") != "none"
    ):
        raise ConversionError(
            f"{gguf.path} uses scaled rotary positions; only plain rotary positions are supported"
        )
    dim, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(gguf.get(f"{arch}.attention.key_length", dim // heads))
    rot = int(gguf.get(f"{arch}.rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ConversionError(
            f"{gguf.path}: rotary dimension {rot} differs from head size {head_dim}; "
            "partial rotary embeddings are not supported"
        )
    body = TransformerConfig(
        dim=dim, n_layers=int(key("block_count")), n_heads=heads,
        n_kv_heads=int(gguf.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=None if head_dim == dim // heads else head_dim,
        mlp_dim=int(key("feed_forward_length")), norm="rmsnorm",
        norm_eps=_f32(key("attention.layer_norm_rms_epsilon")), activation="swiglu",
        causal=True, positions="rotary", max_positions=int(key("context_length")),
        rope_theta=_f32(gguf.get(f"{arch}.rope.freq_base", 10000.0)),
        qkv_bias="blk.0.attn_q.bias" in gguf.shapes, k_bias="blk.0.attn_k.bias" in gguf.shapes,
        out_bias="blk.0.attn_output.bias" in gguf.shapes, mlp_bias="blk.0.ffn_up.bias" in gguf.shapes,
    )  # fmt: skip
    token = lambda name: gguf.get(f"tokenizer.ggml.{name}_token_id")  # noqa: E731
    return CausalLMConfig(
        body=body, vocab_size=gguf.shapes["token_embd.weight"][0],
        tie_embeddings="output.weight" not in gguf.shapes, bos_token_id=optional_int(token("bos")),
        eos_token_ids=token_ids(token("eos")), pad_token_id=optional_int(token("padding")),
        family="llama",
    )  # fmt: skip


def unpermute_gguf(plan: dict[str, Item], cfg: CausalLMConfig) -> dict[str, Item]:
    """Wrap the q and k loaders of a GGUF plan so they undo llama.cpp's rotary permutation."""
    body = cfg.body
    out = dict(plan)
    for name, item in plan.items():
        parts = name.split(".")
        if len(parts) == 5 and parts[2] == "attn" and parts[3] in ("q", "k"):
            heads = body.n_heads if parts[3] == "q" else body.kv_heads
            out[name] = Item(item.shape, _unpermuted(item, heads))
    return out


def _unpermuted(item: Item, heads: int):
    return lambda: unpermute_rotary(item.load(), heads)
