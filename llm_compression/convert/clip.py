"""CLIP (Hugging Face ``CLIPModel``): both towers, projections and ``logit_scale``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from ..config import CLIPConfig, TransformerConfig
from ..errors import ConversionError
from .common import activation, require
from .mapping import Target
from .readers import read_json

_LAYER = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.out_proj": "attn.o",
    "layer_norm1": "attn_norm",
    "mlp.fc1": "mlp.up",
    "mlp.fc2": "mlp.down",
    "layer_norm2": "mlp_norm",
}


def _tower_map(hf: str, ours: str) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for src, dst in _LAYER.items():
        for kind in ("weight", "bias"):
            out[f"{hf}.encoder.layers.{{}}.{src}.{kind}"] = f"{ours}.layers.{{}}.{dst}.{kind}"
    return out


HF_MAP: dict[str, Target] = {
    "vision_model.embeddings.patch_embedding.weight": "vision.patch_embed.weight",
    "vision_model.embeddings.class_embedding": "vision.class_embed",
    "vision_model.embeddings.position_embedding.weight": "vision.pos_embed",
    "vision_model.embeddings.position_ids": None,  # buffer
    "vision_model.pre_layrnorm.weight": "vision.pre_norm.weight",
    "vision_model.pre_layrnorm.bias": "vision.pre_norm.bias",
    "vision_model.post_layernorm.weight": "vision.final_norm.weight",
    "vision_model.post_layernorm.bias": "vision.final_norm.bias",
    "visual_projection.weight": "vision.proj.weight",
    "text_model.embeddings.token_embedding.weight": "text.token_embed.weight",
    "text_model.embeddings.position_embedding.weight": "text.pos_embed",
    "text_model.embeddings.position_ids": None,  # buffer
    "text_model.final_layer_norm.weight": "text.final_norm.weight",
    "text_model.final_layer_norm.bias": "text.final_norm.bias",
    "text_projection.weight": "text.proj.weight",
    "logit_scale": "logit_scale",
    **_tower_map("vision_model", "vision"),
    **_tower_map("text_model", "text"),
}

# Before transformers fixed it, CLIP text configs said eos_token_id=2 and pooled at argmax(ids),
# which is the end-of-text token: the highest id of the CLIP vocabulary.
_LEGACY_EOS = 2


def _tower(
    sub: dict[str, Any], where: str, *, causal: bool, max_positions: int
) -> TransformerConfig:
    return TransformerConfig(
        dim=int(require(sub, "hidden_size", where)),
        n_layers=int(require(sub, "num_hidden_layers", where)),
        n_heads=int(require(sub, "num_attention_heads", where)),
        mlp_dim=int(require(sub, "intermediate_size", where)),
        norm_eps=float(sub.get("layer_norm_eps", 1e-5)),
        activation=activation(sub.get("hidden_act", "quick_gelu"), where),
        causal=causal,
        max_positions=max_positions,
    )


def hf_config(cfg: dict[str, Any], folder: Path) -> CLIPConfig:
    """CLIPConfig from a CLIPModel config.json (+ preprocessor_config.json when present)."""
    where = str(folder / "config.json")
    vis = require(cfg, "vision_config", where)
    txt = require(cfg, "text_config", where)
    image_size = int(vis.get("image_size", 224))
    patch_size = int(vis.get("patch_size", 32))
    vocab = int(txt.get("vocab_size", 49408))
    eos = int(txt.get("eos_token_id", vocab - 1))
    kwargs: dict[str, Any] = {}
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        proc = read_json(pre)
        if "image_mean" in proc:
            kwargs["image_mean"] = tuple(float(x) for x in proc["image_mean"])
            kwargs["image_std"] = tuple(float(x) for x in proc["image_std"])
    return CLIPConfig(
        vision=_tower(
            vis, where + " vision_config", causal=False,
            max_positions=(image_size // patch_size) ** 2 + 1,
        ),
        text=_tower(
            txt, where + " text_config", causal=True,
            max_positions=int(txt.get("max_position_embeddings", 77)),
        ),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=int(cfg.get("projection_dim", 512)),
        vocab_size=vocab,
        eos_token_id=vocab - 1 if eos == _LEGACY_EOS else eos,
        **kwargs,
    )  # fmt: skip


def bpe_to_vocab_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` as a (vocab.json, merges.txt) pair.

    Follows CLIP's ``SimpleTokenizer``: 256 byte symbols, the same with ``</w>``, one symbol per
    merge (the first 48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 ids.
    """
    try:
        with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise ConversionError(f"cannot read the CLIP BPE vocabulary {bpe_gz}: {e}") from e
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def write_clip_vocab(folder: Path, bpe_gz: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` built from CLIP's BPE file into ``folder``."""
    vocab, merges = bpe_to_vocab_merges(bpe_gz)
    Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    Path(folder, "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as in CLIP's tokenizer)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))
