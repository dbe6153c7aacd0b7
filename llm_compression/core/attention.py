"""Multi-head attention (self and cross) on ``scaled_dot_product_attention``, rotary positions and the
explicit key/value cache.

Shapes: ``B`` batch, ``T`` query length, ``S`` key length, ``H`` query heads, ``KV`` key/value heads
(grouped-query attention when ``KV < H``), ``D`` head size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig
from ..errors import InputError
from .compute_layers import added, stacked_linear
from .mlp import linear
from .norm import RMSNorm


class KVCache:
    """Preallocated keys and values of one layer (gpt-fast style), plus its cross-attention K/V.

    ``update(start_pos, k, v)`` writes positions ``start_pos .. start_pos + T`` and returns views of
    every position written so far. Cross-attention keys and values are computed once per encoder
    output (``memory``) and reused for every decode step.
    """

    def __init__(
        self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, *, dtype, device
    ) -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None
        self.memory: torch.Tensor | None = None  # the encoder output ``cross`` was computed from

    def update(
        self, start_pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise InputError(
                f"the KV cache holds {self.max_len} positions but {end} were requested; "
                "create the cache with a larger max_len"
            )
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (indices): rows that ended leave the batch."""
        self.k, self.v = self.k[rows], self.v[rows]
        if self.cross is not None:
            self.cross = (self.cross[0][rows], self.cross[1][rows])
            self.memory = None if self.memory is None else self.memory[rows]


class Rotary:
    """Rotary position tables (HF Llama convention: ``rotate_half`` over the two halves).

    The cos/sin tables are computed in float32 exactly as HF does, lazily, and cached per
    (device, dtype); a table grows when a longer sequence is seen. Not an ``nn.Module``: no state
    is saved or loaded.
    """

    def __init__(self, head_dim: int, theta: float, min_len: int) -> None:
        self.head_dim, self.theta, self.min_len = head_dim, theta, max(min_len, 1)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (torch.device(device), dtype)
        cached = self._tables.get(key)
        if cached is None or cached[0].shape[0] < length:
            n = max(length, self.min_len, 2 * cached[0].shape[0] if cached else 0)
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
            inv_freq = 1.0 / (self.theta ** (exponent / self.head_dim))
            pos = torch.arange(n, dtype=torch.float32, device=device)
            freqs = pos[:, None] * inv_freq[None, :]  # (n, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, D)
            cached = (emb.cos().to(dtype), emb.sin().to(dtype))
            self._tables[key] = cached
        return cached

    def __call__(self, start_pos: int, length: int, device, dtype):
        """cos, sin of shape (length, D) for positions ``start_pos .. start_pos + length``."""
        cos, sin = self._table(start_pos + length, device, dtype)
        return cos[start_pos : start_pos + length], sin[start_pos : start_pos + length]

    def at(self, positions: torch.Tensor, dtype):
        """cos, sin of shape (B, 1, T, D) for per-row positions (B, T) (left-padded batches)."""
        cos, sin = self._table(int(positions.max()) + 1, positions.device, dtype)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for x of shape (B, heads, T, D), in x's dtype (the
    tables are float32: bfloat16 q/k of ``core.compute`` stay bfloat16, as their KV cache)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def _one_query_float32(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether ``q`` (B, H, T, D) is one query a row, float32 on the CPU, attending unmasked."""
    return q.shape[2] == 1 and mask is None and q.dtype == torch.float32 and q.device.type == "cpu"


class Attention(nn.Module):
    """Self-attention (``cross=False``) or cross-attention over an encoder output (``cross=True``).

    Attribute names are the canonical tensor names: ``q``, ``k``, ``v``, ``o`` (+ ``q_norm``,
    ``k_norm`` when ``cfg.qk_norm``).
    """

    def __init__(self, cfg: TransformerConfig, *, cross: bool = False) -> None:
        super().__init__()
        self.cross = cross
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q = linear(cfg.dim, q_dim, cfg.qkv_bias)
        self.k = linear(cfg.dim, kv_dim, cfg.qkv_bias and cfg.k_bias)
        self.v = linear(cfg.dim, kv_dim, cfg.qkv_bias)
        self.o = linear(q_dim, cfg.dim, cfg.out_bias)
        self.qk_norm = cfg.qk_norm and not cross
        if self.qk_norm:
            self.q_norm = RMSNorm(q_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(kv_dim, cfg.norm_eps)
        self.clip_qkv = cfg.clip_qkv
        self.rotary = cfg.positions == "rotary" and not cross
        self.qkv: nn.Module | None = None  # q, k, v in one matmul (set by quantized loading)
        self.memory_dtype: torch.dtype | None = None  # cross-attention K/V kept in it, if set

    def compute_converted(self, mode: str) -> None:
        """Self-attention's q, k and v as one matmul in every mode ``core.compute`` converts
        (float32 too where it runs on oneDNN, joined before packing): the input is cast or
        quantized once, and the kernel sees one wider matrix. int8 cross-attention
        keeps the encoder's keys and values in bfloat16: a decode step reads all of them (1500
        rows a layer in Whisper), and half the bytes halve that read (SDPA 0.26 -> 0.13 ms)."""
        if self.cross and mode == "int8":
            self.memory_dtype = torch.bfloat16
        if self.cross or self.qkv is not None or mode not in ("float32", "bfloat16", "int8"):
            return
        fused = stacked_linear([self.q, self.k, self.v])
        if fused is not None:
            self.qkv, self.q, self.k, self.v = fused, None, None, None

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def _project_kv(self, x: torch.Tensor, k=None, v=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, KV, T, D) of ``x``, or of the projections ``k``, ``v`` given."""
        if k is None:
            k, v = self.k(x), self.v(x)
        if self.clip_qkv is not None:
            k, v = k.clamp(-self.clip_qkv, self.clip_qkv), v.clamp(-self.clip_qkv, self.clip_qkv)
        if self.qk_norm:
            k = self.k_norm(k)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (B, KV, S, D) cross-attention reads from an encoder output
        ``memory`` (B, S, C), in the projections' dtype."""
        return self._project_kv(memory)

    def _cross_kv(self, memory: torch.Tensor | None, cache: KVCache | None):
        if (
            cache is not None
            and cache.cross is not None
            and (memory is None or memory is cache.memory)
        ):
            return cache.cross
        if memory is None:
            raise InputError("cross-attention needs the encoder output: pass memory=(B, S, C)")
        kv = self._project_kv(memory)
        if self.memory_dtype is not None:
            kv = (kv[0].to(self.memory_dtype), kv[1].to(self.memory_dtype))
        if cache is not None:  # each decode step reads them: one head's rows one after another
            kv = (kv[0].contiguous(), kv[1].contiguous())
            cache.cross, cache.memory = kv, memory
        return kv

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        start_pos: int = 0,
        memory: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention's output (B, T, dim), plus ``residual`` if given (in one pass)."""
        B, T, _ = x.shape
        k = v = None
        if self.qkv is not None:
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        else:
            q = self.q(x)
        if self.clip_qkv is not None:
            q = q.clamp(-self.clip_qkv, self.clip_qkv)
        if self.qk_norm:
            q = self.q_norm(q)
        q = self._heads(q, self.n_heads)  # (B, H, T, D)
        if self.cross:
            k, v = self._cross_kv(memory, cache)
            mask, is_causal = None, False
        else:
            k, v = self._project_kv(x, k, v)  # (B, KV, T, D)
            if self.rotary:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.update(start_pos, k, v)  # (B, KV, S, D)
        if k.dtype != q.dtype:  # int8 cross-attention over bfloat16 keys and values
            y = self._sdpa(q.to(k.dtype), k, v, mask, is_causal).to(q.dtype)
        else:  # no casts, not even as no-ops: the ONNX export fuses this pattern (0010)
            y = self._sdpa(q, k, v, mask, is_causal)  # (B, H, T, D)
        return added(
            self.o, y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim), residual
        )

    def _sdpa(self, q, k, v, mask, is_causal) -> torch.Tensor:
        if q.shape[0] > 1 and q.shape[2] == 1 and mask is not None and mask.dim() == 4:
            # a decode step of a left-padded batch: each row attends over its own keys alone,
            # the very call it makes unbatched (the padded call rounds differently)
            pads = (~mask[:, 0, 0]).sum(-1).tolist()
            rows = zip(q.split(1), k.split(1), v.split(1), pads, strict=True)
            return torch.cat([self._sdpa(qi, ki[:, :, p:], vi[:, :, p:], None, False)
                              for qi, ki, vi, p in rows])  # fmt: skip
        groups = self.n_heads // self.n_kv_heads
        if groups == 1 and _one_query_float32(q, mask):
            # softmax(q k^T / sqrt(D)) v as two matmuls: SDPA's flash kernel reads the keys of a
            # single query at half the rate (Whisper's cross-attention: 1.1 -> 0.5 ms a layer)
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
            return torch.matmul(scores.softmax(dim=-1), v)
        if groups == 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        B, H, T, D = q.shape
        if T == 1 and mask is None:
            # one decode step: fold the query heads of each KV group into the query axis
            qg = q.view(B, self.n_kv_heads, groups, D)
            # reshape, not view: SDPA's GPU kernels return a non-contiguous tensor here
            return F.scaled_dot_product_attention(qg, k, v).reshape(B, H, 1, D)
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
