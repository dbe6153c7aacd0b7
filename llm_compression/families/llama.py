"""Llama-family causal LMs (SmolLM2): Hugging Face ``LlamaForCausalLM`` folders and GGUF files.

GGUF stores q and k with llama.cpp's rotary row permutation; ``unpermute_rotary`` restores the
Hugging Face order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import TransformerConfig
from ..errors import ConversionError
from .causal_lm import (
    CausalLMConfig,
    causal_lm_config,
    causal_lm_export_config,
    causal_lm_family,
    causal_lm_map,
)
from .maps import Item, Target, optional_int, token_ids
from .spec import Source

HF_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}


def hf_map(cfg: CausalLMConfig) -> dict[str, Target]:
    return causal_lm_map(cfg, HF_NORMS, {})


def hf_config(cfg: dict[str, Any], folder: Path) -> CausalLMConfig:
    where = str(folder / "config.json")
    return causal_lm_config(
        cfg, where, "llama", norm="rmsnorm", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
    )  # fmt: skip


def hf_export_config(cfg: CausalLMConfig, files: Any = None) -> dict[str, Any]:
    """The ``LlamaForCausalLM`` config.json of ``cfg``, whichever format it was converted from."""
    return causal_lm_export_config(
        cfg, "llama", "LlamaForCausalLM", rms_norm_eps=cfg.body.norm_eps,
        mlp_bias=cfg.body.mlp_bias,
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


def gguf_config(gguf: Any) -> CausalLMConfig:
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
            heads = body.n_heads if parts[3] == "q" else body.n_kv_heads
            out[name] = Item(item.shape, _unpermuted(item, heads))
    return out


def _unpermuted(item: Item, heads: int):
    return lambda: unpermute_rotary(item.load(), heads)


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation for rotary attention.

    ``convert_hf_to_gguf.py`` stored ``w.reshape(n_heads, 2, hd // 2, dim).swapaxes(1, 2)``: it
    interleaves the two rotary halves of each head. This restores the Hugging Face (half-split)
    row order. Works for weights ``(n_heads * hd, dim)`` and biases ``(n_heads * hd,)``.
    """
    rows = weight.shape[0]
    if hasattr(weight, "take_rows"):  # a group-quantized matrix: reorder its rows as they are
        return weight.take_rows(unpermute_rotary(np.arange(rows), n_heads))
    if rows % (2 * n_heads):
        raise ConversionError(
            f"cannot un-permute a rotary projection of {rows} rows into {n_heads} heads of even "
            "size; the GGUF head counts do not match its tensors"
        )
    half = rows // n_heads // 2
    w = weight.reshape(n_heads, half, 2, *weight.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weight.shape))


def _smollm2_135m() -> CausalLMConfig:
    body = TransformerConfig(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, mlp_dim=1536, norm="rmsnorm",
        activation="swiglu", causal=True, positions="rotary", max_positions=8192,
        rope_theta=100000.0, qkv_bias=False, k_bias=False, out_bias=False, mlp_bias=False,
    )  # fmt: skip
    return CausalLMConfig(
        body=body, vocab_size=49152, tie_embeddings=True, bos_token_id=1, eos_token_ids=(2,),
        pad_token_id=2, family="llama",
    )  # fmt: skip


FAMILY = causal_lm_family(
    "llama",
    hf=Source(
        names=("llama",),
        architectures={"LlamaForCausalLM": "llama"},
        config=hf_config,
        name_map=hf_map,
        export_config=hf_export_config,
    ),
    gguf=Source(
        names=("llama",),
        config=gguf_config,
        name_map=lambda cfg: GGUF_MAP,
        fix_plan=unpermute_gguf,
    ),
    presets={"smollm2-135m": _smollm2_135m()},
)
