"""BERT / MiniLM sentence embeddings (sentence-transformers semantics) on the shared core.

Everything the project knows about BERT: its config, the model, the Hugging Face /
sentence-transformers converter map and the all-MiniLM-L6-v2 preset.

Embeddings (token + position + token type, LayerNorm) -> post-norm transformer body -> pooling from
the config (mean over real tokens, CLS or max). The optional L2 normalisation (``normalize``) and
the tokenizing are done by the provider.

Truncation: texts are cut to ``config.max_seq_length`` tokens including [CLS] and [SEP], as
sentence-transformers does (256 for all-MiniLM-L6-v2). The empty string is a valid text: it embeds
``[CLS] [SEP]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..config import TransformerConfig, check_choice, check_positive
from ..core import Transformer
from ..core.mlp import embedding
from ..core.norm import LayerNorm
from ..errors import ConfigError, ConversionError, InputError
from .maps import HF_ACTIVATION_NAMES, Target, activation, read_json, require
from .methods import FamilyMethods
from .spec import Family, Source


@dataclass(frozen=True)
class BertConfig:
    """BERT / MiniLM sentence encoder with the sentence-transformers pooling settings."""

    encoder: TransformerConfig
    vocab_size: int = 30522
    type_vocab_size: int = 2
    pad_token_id: int = 0
    pooling: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = True
    max_seq_length: int = 256  # sentence-transformers truncation length
    family: str = field(default="bert", init=False)

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, ("mean", "cls", "max"))
        check_positive("BertConfig", vocab_size=self.vocab_size, max_seq_length=self.max_seq_length)
        if self.max_seq_length > self.encoder.max_positions:
            raise ConfigError(
                f"max_seq_length={self.max_seq_length} exceeds the position table "
                f"({self.encoder.max_positions}); lower max_seq_length"
            )


class BertEmbeddings(nn.Module):
    lookup_tables = ("token",)  # int8: int8 rows (core.compute; 47 of MiniLM's 90 MB)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        enc = config.encoder
        self.token = embedding(config.vocab_size, enc.dim)
        self.position = embedding(enc.max_positions, enc.dim)
        self.token_type = embedding(config.type_vocab_size, enc.dim)
        self.norm = LayerNorm(enc.dim, enc.norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.token(ids) + self.position.weight[:T] + self.token_type.weight[0]  # (B, T, C)
        return self.norm(x)


def pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool hidden states (B, T, C) over real tokens (``mask`` (B, T) bool) -> (B, C)."""
    if how == "cls":
        return h[:, 0]
    m = mask[..., None].to(h.dtype)  # (B, T, 1)
    if how == "max":
        return h.masked_fill(m == 0, -1e9).max(dim=1).values
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(FamilyMethods, Transformer):
    """Sentence embeddings: token ids -> the body -> the pooling stored in the file.

    Tensors in, tensors out: ``encode(ids, mask)`` returns the pooled, **unnormalised** vectors.
    The file's sentence-transformers ``Normalize`` module (``config.normalize``) is applied by the
    provider, which L2-normalises once; tokenizing and batching are the provider's too.
    """

    empty_text_ok = True  # "" embeds [CLS] [SEP]

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config.encoder)  # post-norm: the config says final_norm=False
        self.config = config
        self.embed = BertEmbeddings(config)
        self.tokenizer = None

    @property
    def embedding_dim(self) -> int:
        return self.config.encoder.dim

    @property
    def text_context(self) -> int:
        """Most tokens of one text, [CLS] and [SEP] included (sentence-transformers' truncation)."""
        return self.config.max_seq_length

    @property
    def normalizes(self) -> bool:
        """Whether the file's pipeline ends in L2 normalisation (sentence-transformers Normalize)."""
        return self.config.normalize

    @torch.inference_mode()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embeddings (B, D), unnormalised, for token ids (B, T) and a mask (B, T), 1 = real."""
        if ids.shape[1] > self.config.encoder.max_positions:
            raise InputError(
                f"{ids.shape[1]} tokens exceed the position table "
                f"({self.config.encoder.max_positions}); truncate the input"
            )
        if mask is None:
            mask = torch.ones_like(ids)
        keep = mask.bool()  # (B, T)
        padded = not bool(keep.all())
        attn = keep[:, None, None, :] if padded else None  # (B, 1, 1, T)
        h = super().forward(self.embed(ids), mask=attn)
        return pool(h, keep, self.config.pooling)

    forward = encode
    encode_text = encode  # the name every text family shares: the provider calls encode_text


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


def hf_export_config(cfg: BertConfig, files: Any = None) -> dict[str, Any]:
    """The ``BertModel`` config.json of ``cfg`` (inverse of ``hf_config``)."""
    enc = cfg.encoder
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": enc.dim, "num_hidden_layers": enc.n_layers,
        "num_attention_heads": enc.n_heads, "intermediate_size": enc.mlp_dim,
        "hidden_act": HF_ACTIVATION_NAMES[enc.activation], "layer_norm_eps": enc.norm_eps,
        "max_position_embeddings": enc.max_positions, "type_vocab_size": cfg.type_vocab_size,
        "pad_token_id": cfg.pad_token_id, "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }  # fmt: skip


def _minilm_l6() -> BertConfig:
    encoder = TransformerConfig(
        dim=384, n_layers=6, n_heads=12, mlp_dim=1536, norm_eps=1e-12, norm_placement="post",
        max_positions=512, final_norm=False,  # post-norm: every block already ends in a norm
    )  # fmt: skip
    return BertConfig(encoder=encoder)


FAMILY = Family(
    name="bert",
    config_class=BertConfig,
    model_class=SentenceEncoder,
    describes="a sentence-encoder (MiniLM/BERT) weight file",
    provider_argument="text_model",
    modalities=("text",),
    embedding_dim=lambda cfg: cfg.encoder.dim,
    hf=Source(
        names=("bert",),
        architectures={
            "BertModel": "bert",
            "BertForMaskedLM": "bert",
            "BertForPreTraining": "bert",
        },
        config=hf_config,
        name_map=lambda cfg: HF_MAP,
        extra_files=("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"),
        export_config=hf_export_config,
    ),
    presets={"all-minilm-l6-v2": _minilm_l6()},
)
