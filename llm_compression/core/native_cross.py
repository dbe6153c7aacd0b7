"""A decoder with cross-attention (Whisper's text decoder) in our C kernel (``core._decode``,
flag 64; docs/decisions/0018-float32-decode-steps.md, "Whisper's decoder"): one call a step
for every layer, the norms, both attentions, the MLP and the tied head.

The body it runs: pre-LayerNorm blocks with biases, causal self-attention over the caller's KV
cache (learned positions, added to the input by the caller), cross-attention over keys and
values the caller projects once from the encoder's output, a GELU (erf) MLP, a final LayerNorm
and the head. Its matrices are either int8 rows (``Int8Rows``: copied into the kernel's tiles,
each matmul's input quantized a group of 32, as the native decoder does) or float32
``nn.Linear`` rows, viewed (no copy; every sum float32, ~1e-6 from torch's).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import TransformerConfig
from ..errors import InputError
from .decoder_graph import check_cache_tensor
from .native_decoder import _decode
from .native_encoder import (
    GELU,
    LAYER_NORM,
    body_why_not,
    float_vector,
    matrix_spec,
    stacked_spec,
)

CROSS = 64  # _decode.c's flag


def why_not(cfg: TransformerConfig) -> str | None:
    """Why the kernel cannot run this body as a decoder with cross-attention (None: it can)."""
    wanted = {
        "causal": True, "cross_attention": True, "norm": "layernorm", "norm_placement": "pre",
        "activation": "gelu", "qk_norm": False, "clip_qkv": None, "final_norm": True,
        "n_kv_heads": cfg.n_heads,
    }  # fmt: skip
    return body_why_not(cfg, wanted)


def _layer_entry(block: nn.Module) -> tuple:
    """One block's entry for ``_decode.create`` (flag 64: the cross-attention's part last)."""
    attn, cross, mlp = block.attn, block.cross_attn, block.mlp
    qkv = stacked_spec([attn.qkv] if attn.qkv is not None else [attn.q, attn.k, attn.v])
    o, up, down, cq, co = map(matrix_spec, (attn.o, mlp.up, mlp.down, cross.q, cross.o))
    norms = (block.attn_norm, block.mlp_norm, block.cross_attn_norm)
    weights, biases = [float_vector(n.weight) for n in norms], [float_vector(n.bias) for n in norms]
    return (qkv[0], o[0], up[0], down[0], weights[0], weights[1], None, None, biases[0],
            biases[1], qkv[1], o[1], up[1], down[1], cq[0], co[0], weights[2], biases[2], cq[1],
            co[1])  # fmt: skip


class CrossDecoder:
    """``core._decode``'s model of a decoder body with cross-attention (``why_not`` is None for
    its config) and its tied head ``head`` (an ``nn.Embedding``'s float32 rows, viewed, or an
    ``Int8Embedding``'s int8 rows, copied). ``run`` is the body plus the head."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        from .quantized import threads

        cfg = body.cfg
        dims = (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim,
                cfg.max_positions)  # fmt: skip
        final = (float_vector(body.final_norm.weight), float_vector(body.final_norm.bias))
        head_spec = _head_spec(head)
        entries = [_layer_entry(block) for block in body.layers]
        flags = LAYER_NORM | GELU | CROSS
        self._model = _decode.create(dims, float(cfg.norm_eps), flags, threads(), None, None,
                                     final, head_spec, entries)  # fmt: skip
        self.float32 = head_spec[0] == 32
        self.views = None  # float32: the caller's WeightViews of the rows it reads in place
        self.vocab, self.max_positions = head_spec[1], cfg.max_positions
        copied = [] if self.float32 else [*entries, (head_spec,)]  # float32: viewed, no copy
        self.nbytes = sum(_tile_bytes(e) for e in copied)

    def run(self, x: torch.Tensor, cache: list, start_pos: int) -> torch.Tensor:
        """Logits (B, T, vocab) of every position of ``x`` (B, T, dim: embeddings with their
        positions), whose keys and values go to ``cache`` (one ``KVCache`` a layer, its
        ``cross`` the encoder's float32 keys and values) at ``start_pos ..``."""
        B, T, _ = x.shape
        capacity = cache[0].k.shape[2]
        if start_pos < 0 or start_pos + T > min(capacity, self.max_positions):
            raise InputError(
                f"the KV cache holds {capacity} positions (the model {self.max_positions}) but "
                f"{start_pos + T} were requested; create the cache with a larger max_len"
            )
        caches = [_view(t, "KV cache") for layer in cache for t in (layer.k, layer.v)]
        cross = [_view(_shared_rows(t), "cross-attention keys") for layer in cache
                 for t in layer.cross]  # fmt: skip
        memory = cache[0].cross[0].shape[2]
        past = np.full(B, start_pos, np.int32)
        wanted = np.ascontiguousarray(np.arange(T)[None].repeat(B, 0), np.int64)
        logits = np.empty((B, T, self.vocab), np.float32)
        embeds = np.array(x.detach().to(torch.float32).numpy(), np.float32, order="C")
        _decode.step(self._model, embeds, B, T, past, caches, capacity, wanted, T, logits, cross,
                     memory)  # fmt: skip
        return torch.from_numpy(logits)


def _head_spec(head: nn.Module) -> tuple:
    """A tied head's rows as the kernel takes them (no bias)."""
    values = getattr(head, "values", None)
    if values is None:  # a float32 nn.Embedding: its rows, viewed
        return matrix_spec(head)[0]
    q = np.ascontiguousarray(values.numpy(), np.int8)  # an Int8Embedding: int8 rows, copied
    return (8, q.shape[0], q.shape[1], q, np.ascontiguousarray(head.scales.numpy()), None)


def _tile_bytes(entry: tuple) -> int:
    """Bytes of the int8 matrices the kernel copies from one entry (values and row scales)."""
    specs = [e for e in entry if isinstance(e, tuple)]
    return sum(s[1] * s[2] + s[1] * 4 for s in specs)


def _shared_rows(t: torch.Tensor) -> torch.Tensor:
    """One row for all where every row is the same (beam search expands one row's keys)."""
    return t[:1] if t.shape[0] > 1 and t.stride(0) == 0 else t


def _view(t: torch.Tensor, what: str) -> np.ndarray:
    check_cache_tensor(t, what)
    return t.numpy()
