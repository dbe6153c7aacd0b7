"""The one transformer block. Norm placement is a config value:

- ``pre``:           ``x = x + f(norm(x))``   (CLIP, Whisper, Llama, OLMo-1)
- ``post``:          ``x = norm(x + f(x))``   (BERT)
- ``sandwich_post``: ``x = x + norm(f(x))``   (OLMo-2)

for each sublayer ``f`` in (self-attention, cross-attention when configured, MLP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import TransformerConfig
from .attention import Attention, KVCache
from .mlp import MLP
from .norm import make_norm


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.placement = cfg.norm_placement
        self.attn_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        if cfg.cross_attention:
            self.cross_attn_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
            self.cross_attn = Attention(cfg, cross=True)
        self.mlp_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.has_cross = cfg.cross_attention

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, f: Callable) -> torch.Tensor:
        """``f(h, residual=x)`` is ``x + f(h)``, the sum in ``f``'s last matmul where it can be."""
        if self.placement == "pre":
            return f(norm(x), residual=x)
        if self.placement == "post":
            return norm(f(x, residual=x))
        return x + norm(f(x))  # sandwich_post

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope=None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        start_pos: int = 0,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def self_attn(h, residual=None):
            return self.attn(
                h, rope=rope, mask=mask, is_causal=is_causal, cache=cache, start_pos=start_pos,
                residual=residual,
            )  # fmt: skip

        def cross_attn(h, residual=None):
            return self.cross_attn(h, cache=cache, memory=memory, residual=residual)

        x = self._sublayer(x, self.attn_norm, self_attn)
        if self.has_cross:
            x = self._sublayer(x, self.cross_attn_norm, cross_attn)
        return self._sublayer(x, self.mlp_norm, self.mlp)
