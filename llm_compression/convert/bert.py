"""BERT / MiniLM (Hugging Face ``BertModel``) with sentence-transformers pooling settings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import BertConfig, TransformerConfig
from ..errors import ConversionError
from .common import activation, require
from .mapping import Target
from .readers import read_json

logger = logging.getLogger(__name__)

_LAYER = {
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.o",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up",
    "output.dense": "mlp.down",
    "output.LayerNorm": "mlp_norm",
}


def _map(prefix: str) -> dict[str, Target]:
    out: dict[str, Target] = {
        f"{prefix}embeddings.word_embeddings.weight": "embed.token.weight",
        f"{prefix}embeddings.position_embeddings.weight": "embed.position.weight",
        f"{prefix}embeddings.token_type_embeddings.weight": "embed.token_type.weight",
        f"{prefix}embeddings.LayerNorm.weight": "embed.norm.weight",
        f"{prefix}embeddings.LayerNorm.bias": "embed.norm.bias",
        f"{prefix}embeddings.position_ids": None,  # buffer
        f"{prefix}embeddings.token_type_ids": None,  # buffer
        f"{prefix}pooler.dense.weight": None,  # sentence embeddings pool the hidden states
        f"{prefix}pooler.dense.bias": None,
    }
    for src, dst in _LAYER.items():
        for kind in ("weight", "bias"):
            out[f"{prefix}encoder.layer.{{}}.{src}.{kind}"] = f"layers.{{}}.{dst}.{kind}"
    return out


# BertModel checkpoints have bare names; BertFor* checkpoints prefix the body with "bert.".
# Pretraining heads of BertForPreTraining / BertForMaskedLM checkpoints are dropped.
_HEADS = [
    "cls.predictions.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
]
HF_MAP: dict[str, Target] = {**_map(""), **_map("bert."), **dict.fromkeys(_HEADS)}

_POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def _sentence_transformers(folder: Path, max_positions: int) -> dict[str, Any]:
    """pooling, normalize and max_seq_length from a sentence-transformers folder."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        logger.info("%s has no modules.json: mean pooling, no normalization", folder)
        return {"pooling": "mean", "normalize": False, "max_seq_length": max_positions}
    modules = read_json(modules_path)
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    out: dict[str, Any] = {"normalize": "Normalize" in kinds, "pooling": "mean"}
    if "Pooling" in kinds:
        pooling_path = folder / kinds["Pooling"].get("path", "1_Pooling") / "config.json"
        pooling = read_json(pooling_path)
        chosen = [mode for key, mode in _POOLING_MODES.items() if pooling.get(key)]
        others = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
        if len(chosen) != 1 or len(others) != 1:
            raise ConversionError(
                f"{pooling_path} enables pooling modes {others}; exactly one of "
                f"{sorted(_POOLING_MODES)} is supported"
            )
        out["pooling"] = chosen[0]
    st_path = folder / "sentence_bert_config.json"
    st = read_json(st_path) if st_path.is_file() else {}
    out["max_seq_length"] = int(st.get("max_seq_length") or max_positions)
    return out


def hf_config(cfg: dict[str, Any], folder: Path) -> BertConfig:
    """BertConfig from config.json and the sentence-transformers files beside it."""
    where = str(folder / "config.json")
    kind = cfg.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ConversionError(
            f"{where}: position_embedding_type={kind!r}; only 'absolute' is supported"
        )
    max_positions = int(require(cfg, "max_position_embeddings", where))
    encoder = TransformerConfig(
        dim=int(require(cfg, "hidden_size", where)),
        n_layers=int(require(cfg, "num_hidden_layers", where)),
        n_heads=int(require(cfg, "num_attention_heads", where)),
        mlp_dim=int(require(cfg, "intermediate_size", where)),
        norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        norm_placement="post",
        final_norm=False,  # post-norm: each layer already ends with a norm
        activation=activation(cfg.get("hidden_act", "gelu"), where),
        max_positions=max_positions,
    )
    return BertConfig(
        encoder=encoder,
        vocab_size=int(require(cfg, "vocab_size", where)),
        type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        pad_token_id=int(cfg.get("pad_token_id") or 0),
        **_sentence_transformers(folder, max_positions),
    )
