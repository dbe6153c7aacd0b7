"""OLMo causal LMs: Hugging Face ``OlmoForCausalLM`` (OLMo-1) and ``Olmo2ForCausalLM`` (OLMo-2).

Semantics as in transformers' modeling_olmo / modeling_olmo2:
- OLMo-1: non-parametric LayerNorm (no weight, no bias; eps fixed at 1e-5) before attention and
  MLP and at the end; optional ``clip_qkv`` clamps q, k and v.
- OLMo-2: RMSNorm (``rms_norm_eps``) applied to each sublayer's output inside the residual
  (``post_attention_layernorm``, ``post_feedforward_layernorm``), RMSNorm over the full q and k
  projections (``q_norm``, ``k_norm``) and a final RMSNorm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .causal_lm import (
    CausalLMConfig,
    causal_lm_config,
    causal_lm_export_config,
    causal_lm_family,
    causal_lm_map,
)
from .maps import Target
from .spec import Source

OLMO1_NORM_EPS = 1e-5  # OlmoLayerNorm hard-codes eps=1e-5
OLMO2_NORMS = {"post_attention_layernorm": "attn_norm", "post_feedforward_layernorm": "mlp_norm"}
OLMO2_QK_NORMS = {"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"}


def hf_map(cfg: CausalLMConfig) -> dict[str, Target]:
    if cfg.body.qk_norm:  # OLMo-2
        out = causal_lm_map(cfg, OLMO2_NORMS, {})
        for src, dst in OLMO2_QK_NORMS.items():
            out[f"model.layers.{{}}.{src}.weight"] = f"layers.{{}}.{dst}.weight"
        return out
    return causal_lm_map(cfg, {}, {})  # OLMo-1: non-parametric norms hold no tensors


def hf_config(cfg: dict[str, Any], folder: Path) -> CausalLMConfig:
    """OLMo-1 for model_type "olmo", OLMo-2 for "olmo2"."""
    where = str(folder / "config.json")
    if cfg.get("model_type") == "olmo2":
        return causal_lm_config(
            cfg, where, "olmo", norm="rmsnorm", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            norm_placement="sandwich_post", qk_norm=True, mlp_bias=False,
        )  # fmt: skip
    clip = cfg.get("clip_qkv")
    return causal_lm_config(
        cfg, where, "olmo", norm="layernorm_nonparam", norm_eps=OLMO1_NORM_EPS,
        clip_qkv=None if clip is None else float(clip), mlp_bias=False,
    )  # fmt: skip


def hf_export_config(cfg: CausalLMConfig, files: Any = None) -> dict[str, Any]:
    """The ``Olmo2ForCausalLM`` (qk norm) or ``OlmoForCausalLM`` config.json of ``cfg``."""
    if cfg.body.qk_norm:
        return causal_lm_export_config(
            cfg, "olmo2", "Olmo2ForCausalLM", rms_norm_eps=cfg.body.norm_eps
        )
    return causal_lm_export_config(cfg, "olmo", "OlmoForCausalLM", clip_qkv=cfg.body.clip_qkv)


FAMILY = causal_lm_family(
    "olmo",
    hf=Source(
        names=("olmo", "olmo2"),
        architectures={"OlmoForCausalLM": "olmo", "Olmo2ForCausalLM": "olmo2"},
        config=hf_config,
        name_map=hf_map,
        export_config=hf_export_config,
    ),
)
