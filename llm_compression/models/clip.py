"""CLIP: a ViT vision tower and a causal text tower on the shared core, each with a projection.

``encode_image`` / ``encode_text`` return L2-normalised vectors in the joint space
(``projection_dim``, 512 for ViT-B/32); ``logit_scale`` is stored as its log, as in the checkpoints.
Texts longer than the context (77 tokens) are truncated, keeping the end-of-text token last, as
OpenAI's ``clip.tokenize(..., truncate=True)`` does.

Example
-------
>>> model = load_model("clip-vit-b-32.parquet")                                # doctest: +SKIP
>>> img = model.embed_images(["cat.png"]); txt = model.embed_texts(["a photo of a cat"])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig
from ..core import Transformer
from ..core.mlp import linear
from ..core.norm import LayerNorm
from ..errors import InputError
from .bert import _check_texts
from .causal_lm import embedding
from .family_hint import FamilyMethods


class VisionTower(Transformer):
    """Patch conv stem + class token + learned positions + pre-norm -> body -> CLS -> projection."""

    def __init__(self, config: CLIPConfig) -> None:
        cfg = config.vision
        super().__init__(cfg)
        self.patch_size = config.patch_size
        self.patch_embed = nn.Conv2d(
            3, cfg.dim, config.patch_size, config.patch_size, bias=False, device="meta"
        )
        self.patch_embed.weight = nn.Parameter(
            torch.empty(cfg.dim, 3, config.patch_size, config.patch_size)
        )
        self.class_embed = nn.Parameter(torch.empty(cfg.dim))
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))
        self.pre_norm = LayerNorm(cfg.dim, cfg.norm_eps)
        self.proj = linear(cfg.dim, config.projection_dim, False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised image features (B, P) for pixels (B, 3, S, S)."""
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, C, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embed.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N + 1, C)
        h = super().forward(self.pre_norm(x))  # final_norm is CLIP's post_layernorm
        return self.proj(h[:, 0])


class TextTower(Transformer):
    """Token + learned position embeddings -> causal body -> final norm -> EOT token -> projection."""

    def __init__(self, config: CLIPConfig) -> None:
        cfg = config.text
        super().__init__(cfg)
        self.eos_token_id = config.eos_token_id
        self.token_embed = embedding(config.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))
        self.proj = linear(cfg.dim, config.projection_dim, False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised text features (B, P) for token ids (B, T), T <= context."""
        T = ids.shape[1]
        if self.pos_embed.shape[0] < T:
            raise InputError(
                f"{T} tokens exceed CLIP's context of {self.pos_embed.shape[0]}; truncate the ids"
            )
        h = super().forward(self.token_embed(ids) + self.pos_embed[:T])  # (B, T, C)
        if self.eos_token_id == 2:  # legacy configs (HF): the end token has the largest id
            eot = ids.argmax(dim=-1)
        else:  # the first end-of-text token (padding may repeat it)
            eot = (ids == self.eos_token_id).int().argmax(dim=-1)
        return self.proj(h[torch.arange(ids.shape[0], device=ids.device), eot])


class CLIP(FamilyMethods, nn.Module):
    """CLIP with ``vision`` and ``text`` towers and ``logit_scale`` (canonical names)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.tokenizer = None

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, P) for preprocessed pixels (B, 3, S, S)."""
        size = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise InputError(
                f"pixels must have shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}; "
                "preprocess images with embed_images or preprocess.image.clip_pixels"
            )
        return F.normalize(self.vision(pixels), dim=-1)

    @torch.inference_mode()
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings (B, P) for token ids (B, T) ending in end-of-text."""
        return F.normalize(self.text(ids), dim=-1)

    @torch.inference_mode()
    def similarity_logits(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor
    ) -> torch.Tensor:
        """``exp(logit_scale) * image @ text.T`` (images x texts), as CLIP's ``logits_per_image``."""
        return self.logit_scale.exp() * image_embeds @ text_embeds.T

    def embed_images(self, images: Sequence, *, batch_size: int = 32) -> np.ndarray:
        """Embed images (paths, PIL images or arrays) -> float32 (N, P), in input order."""
        from ..preprocess.image import clip_pixels

        if not isinstance(images, (list, tuple)):
            raise InputError(
                f"images must be a list of images, got {type(images).__name__}; wrap one image: [image]"
            )
        if not images:
            raise InputError("images is empty; pass at least one image")
        _check_batch_size(batch_size)
        cfg = self.config
        out = []
        for start in range(0, len(images), batch_size):
            pixels = clip_pixels(
                images[start : start + batch_size],
                size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std,
            )  # fmt: skip
            out.append(self.encode_image(pixels.to(self.logit_scale.device)).float().cpu())
        return torch.cat(out).numpy()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, T) padded with end-of-text, truncated to the context (end token kept)."""
        texts = _check_texts(texts)
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise InputError(f"texts at positions {empty[:5]} are empty; CLIP needs some text")
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; load it with llm_compression.load_model")
        eos, context = self.config.eos_token_id, self.config.context_length
        rows = [list(self.tokenizer.encode(t, add_special_tokens=True)) for t in texts]
        ids = torch.full((len(rows), max(len(r) for r in rows)), eos, dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r) > context:
                r = r[: context - 1] + [eos]
            ids[i, : len(r)] = torch.tensor(r)
        return ids[:, :context]

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Embed texts -> float32 (N, P), in input order (truncated to the 77-token context)."""
        _check_batch_size(batch_size)
        ids = self.tokenize(texts).to(self.logit_scale.device)
        out = [
            self.encode_text(ids[start : start + batch_size]).float().cpu()
            for start in range(0, ids.shape[0], batch_size)
        ]
        return torch.cat(out).numpy()


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
