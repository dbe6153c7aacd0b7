"""BERT / MiniLM sentence embeddings (sentence-transformers semantics) on the shared core.

Embeddings (token + position + token type, LayerNorm) -> post-norm transformer body -> pooling from
the config (mean over real tokens, CLS or max) -> optional L2 normalisation.

Truncation: texts are cut to ``config.max_seq_length`` tokens including [CLS] and [SEP], as
sentence-transformers does (256 for all-MiniLM-L6-v2). The empty string is a valid text: it embeds
``[CLS] [SEP]``.

Example
-------
>>> model = load_model("all-minilm-l6-v2.parquet")                           # doctest: +SKIP
>>> model.embed_texts(["a cat", "a dog"]).shape                              # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import BertConfig
from ..core import Transformer
from ..core.norm import LayerNorm
from ..errors import InputError
from .causal_lm import embedding
from .family_hint import FamilyMethods


class BertEmbeddings(nn.Module):
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
    """Sentence embeddings with the pooling and normalisation stored in the file."""

    def __init__(self, config: BertConfig) -> None:
        # BERT's post-norm body ends in a norm already: it has no separate final norm, whatever
        # ``encoder.final_norm`` says (weight files carry no ``final_norm.*`` tensors for BERT).
        super().__init__(dataclasses.replace(config.encoder, final_norm=False))
        self.config = config
        self.embed = BertEmbeddings(config)
        self.tokenizer = None

    @property
    def embedding_dim(self) -> int:
        return self.config.encoder.dim

    @torch.inference_mode()
    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (B, D) for token ids (B, T) with an attention mask (B, T), 1 = real token."""
        if ids.shape[1] > self.config.encoder.max_positions:
            raise InputError(
                f"{ids.shape[1]} tokens exceed the position table "
                f"({self.config.encoder.max_positions}); truncate the input"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        keep = attention_mask.bool()  # (B, T)
        padded = not bool(keep.all())
        mask = keep[:, None, None, :] if padded else None  # (B, 1, 1, T)
        h = super().forward(self.embed(ids), mask=mask)
        out = pool(h, keep, self.config.pooling)
        return F.normalize(out, p=2, dim=-1) if self.config.normalize else out

    forward = encode

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Embed texts -> float32 array (N, D), in input order.

        Texts are sorted by token count and padded per batch for throughput.
        """
        texts = _check_texts(texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; load it with llm_compression.load_model")
        ids, att = self.tokenizer.encode_batch(list(texts), max_length=self.config.max_seq_length)
        lengths = att.sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        device = self.embed.token.weight.device
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            cols = np.flatnonzero(att[rows].any(axis=0))  # drop columns that are padding only
            batch_ids = torch.from_numpy(np.ascontiguousarray(ids[rows][:, cols], dtype=np.int64))
            batch_mask = torch.from_numpy(np.ascontiguousarray(att[rows][:, cols]))
            vectors = self.encode(batch_ids.to(device), batch_mask.to(device))
            out[rows] = vectors.float().cpu().numpy()
        return out


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise InputError("texts must be a list of str, got a single str; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise InputError("texts is empty; pass at least one text")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise InputError(f"every text must be a str, got {bad[:3]}")
    return texts
