"""The transformer body shared by every model: a stack of ``Block`` and an optional final norm.

Family towers subclass ``Transformer`` and add their stem (token / patch embeddings, positions) and
head; the body never changes. Modules create no value buffers, so a model builds on the meta device
and ``load_state_dict(weights, assign=True, strict=True)`` fills it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import TransformerConfig
from ..errors import InputError
from .attention import KVCache, Rotary
from .block import Block
from .norm import make_norm

if TYPE_CHECKING:
    from .native_encoder import NativeEncoder

log = logging.getLogger(__name__)


class Transformer(nn.Module):
    """Blocks + final norm. Attribute names equal the canonical tensor names (docs/naming.md)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = (
            make_norm(cfg.norm, cfg.dim, cfg.norm_eps) if cfg.final_norm else nn.Identity()
        )
        self.rotary = (
            Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_positions)
            if cfg.positions == "rotary"
            else None
        )
        self.native: NativeEncoder | None = None  # the body in our C kernel (int8 encoders)

    def runs_natively(self, mode: str) -> bool:
        """Whether this body computes in our C kernel in ``mode``: int8, a post-norm encoder
        (BERT) where the CPU and the config allow (``core.native_encoder``; decision 0016).
        ``core.compute`` then converts its linear layers to plain int8 rows for the kernel."""
        if mode != "int8" or self.native is not None:
            return False
        from . import native_encoder  # int8 only: float32 and bfloat16 loads do not import it

        why = native_encoder.why_not(self.cfg)
        if why is not None and not self.cfg.causal:
            log.info("int8 body on torch's int8 linears, not our kernel: %s", why)
        return why is None

    def compute_converted(self, mode: str) -> None:
        """int8: a body that ``runs_natively`` moves into our C kernel, one call a batch: its
        int8 rows (converted before this runs) are copied there and released."""
        from . import native_encoder

        if mode != "int8" or self.native is not None or not native_encoder.int8_layers(self.layers):
            return
        if native_encoder.why_not(self.cfg) is None:
            self.native = native_encoder.NativeEncoder(self.cfg, self.layers)

    def new_cache(self, batch: int, max_len: int, *, dtype=None, device=None) -> list[KVCache]:
        """One preallocated ``KVCache`` per layer for incremental decoding of up to ``max_len``."""
        attn = self.layers[0].attn
        q = attn.q if attn.qkv is None else attn.qkv  # nn.Linear, a core.compute or quantized one
        floats = (p for p in self.parameters() if p.is_floating_point())
        ref = q.weight if isinstance(q, nn.Linear) else next(floats, torch.empty(0))
        dtype, device = dtype or getattr(q, "io_dtype", ref.dtype), device or ref.device
        cfg = self.cfg
        return [
            KVCache(batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype=dtype, device=device)
            for _ in range(cfg.n_layers)
        ]

    def _mask(
        self, mask, T: int, S: int, start_pos: int, device
    ) -> tuple[torch.Tensor | None, bool]:
        """The attention mask for SDPA and whether SDPA's own causal flag applies."""
        if not self.cfg.causal:
            return mask, False
        if mask is None:
            if T == S:
                return None, bool(T > 1)  # a bool when traced too (onnxrt export)
            if T == 1:
                return None, False  # one new query sees every cached position
        rows = torch.arange(start_pos, start_pos + T, device=device)[:, None]
        causal = torch.arange(S, device=device)[None, :] <= rows  # (T, S)
        if mask is None:
            return causal, False
        # a padded query may see nothing: let every query see itself so no row is all -inf
        diagonal = torch.arange(S, device=device)[None, :] == rows
        return causal & (mask | diagonal), False

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        start_pos: int = 0,
        memory: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the body on embedded input ``x`` (B, T, C) and return (B, T, C).

        Parameters
        ----------
        mask : bool tensor broadcastable to (B, 1, T, S), True = attend; combined with the causal
            mask when ``cfg.causal``. None: no padding.
        cache : one ``KVCache`` per layer (``new_cache``); keys/values are written at
            ``start_pos .. start_pos + T`` and attention spans positions ``0 .. start_pos + T``.
        start_pos : position of ``x[:, 0]`` (rotary positions and the cache offset).
        memory : (B, S, C) encoder output for cross-attention; its K/V are computed once per cache.
        positions : (B, T) rotary positions per row (a left-padded batch: padding does not count);
            None: ``start_pos .. start_pos + T`` for every row.
        """
        if self.native is not None:
            if cache is not None or memory is not None or start_pos:
                raise InputError(
                    "this body runs as an encoder in our C kernel: it takes the whole sequence "
                    "at once, with no KV cache, encoder memory or start position; pass x and mask"
                )
            return self.native.run(x, mask)
        T = x.shape[1]
        S = start_pos + T if cache is not None else T
        attn_mask, is_causal = self._mask(mask, T, S, start_pos, x.device)
        rope = None
        if self.rotary is not None and positions is not None:
            rope = self.rotary.at(positions, x.dtype)
        elif self.rotary is not None:
            rope = self.rotary(start_pos, T, x.device, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                rope=rope,
                mask=attn_mask,
                is_causal=is_causal,
                cache=None if cache is None else cache[i],
                start_pos=start_pos,
                memory=memory,
            )
        return self.final_norm(x)
