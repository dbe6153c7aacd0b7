"""A BERT-style encoder's whole int8 pass in our C kernel (``core._decode``'s ``encode``; docs/
decisions/0016-native-encoder.md): one call a batch instead of ~15 torch ops a layer.

The body it runs: post-norm blocks (``x = LayerNorm(x + f(x))``), attention over each row's real
tokens, a GELU (erf) MLP, biases everywhere; no rotary positions, no cross-attention (what
``why_not`` checks). The weights are the int8 rows and float32 row scales ``core.compute``'s
``Int8Rows`` layers hold (an int8 file's own values; no torch packing), copied once into the
kernel's tiles (the torch layers are then released); each matmul quantizes its input to int8 a
group of 32 and sums each group's products exactly in int32 (AVX512-VNNI), as the native
decoder does. So a text's
vector does not depend on its batch-mates (torch's dynamic int8 quantizes a whole batch with one
scale), and it stays closer to float32 (all-MiniLM-L6-v2: cosine 0.9993 mean against torch's
0.9923). Torch's kernels are faster from ~160 rows a batch (they sum a whole row in int32 where
ours scales every group of 32); decision 0016 has the figures.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import TransformerConfig
from ..errors import InputError
from ..weightfile.groupwise import GROUP
from .native_decoder import _decode, kernel_why_not

LAYER_NORM, NORM_AFTER, GELU, ENCODER = 4, 8, 16, 32  # _decode.c's flags


def why_not(cfg: TransformerConfig) -> str | None:
    """Why the kernel cannot run this body as an encoder (None: it can)."""
    wanted = {
        "causal": False, "norm": "layernorm", "norm_placement": "post", "activation": "gelu",
        "cross_attention": False, "qk_norm": False, "clip_qkv": None, "final_norm": False,
    }  # fmt: skip
    return body_why_not(cfg, wanted)


def body_why_not(cfg: TransformerConfig, wanted: dict) -> str | None:
    """Why the kernel cannot run a body of ``cfg`` here: the extension or the CPU, a config
    field not the ``wanted`` value, rotary positions, widths that are not whole groups."""
    why = kernel_why_not()
    if why is not None:
        return why
    for name, needed in wanted.items():
        value = getattr(cfg, name)
        if value != needed:
            return f"{name}={value!r} (the kernel runs {name}={needed!r})"
    if cfg.positions == "rotary":
        return "rotary positions (the kernel takes positions added to the input)"
    widths = {
        "dim": cfg.dim,
        "mlp_dim": cfg.mlp_dim,
        "heads x head_dim": cfg.n_heads * cfg.head_dim,
    }
    odd = [name for name, width in widths.items() if width % GROUP]
    return f"{odd[0]} is not a multiple of {GROUP}" if odd else None


def matrix_spec(layer: nn.Module) -> tuple[tuple, np.ndarray | None]:
    """A linear layer as the kernel takes it, and its float32 bias or None: an ``Int8Rows``
    layer as (8, rows, cols, int8 values, one float32 scale a row, None) (copied into the
    kernel's tiles), a float32 ``nn.Linear`` as (32, rows, cols, its weight, None, None) (viewed,
    no copy)."""
    weight, bias = layer.weight, getattr(layer, "bias", None)
    if not weight.is_quantized:
        w = weight.detach()
        if w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous():
            raise ValueError("a float32 layer's weight is contiguous float32 on the CPU")
        return (32, w.shape[0], w.shape[1], w.numpy(), None, None), float_vector(bias)
    if bool((weight.q_per_channel_zero_points() != 0).any()):
        raise ValueError("an int8 layer with zero points (the kernel takes symmetric rows)")
    values = np.ascontiguousarray(weight.int_repr().numpy(), np.int8)
    scales = np.ascontiguousarray(weight.q_per_channel_scales().numpy(), np.float32)
    rows, cols = values.shape
    return (8, rows, cols, values, scales, None), float_vector(bias)


def float_vector(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else np.ascontiguousarray(t.detach().numpy(), np.float32)


def stacked_spec(layers: list) -> tuple[tuple, np.ndarray | None]:
    """Layers sharing their input (q, k and v) as one matrix: rows, scales and biases one after
    the other (exact); one layer as ``matrix_spec`` gives it."""
    parts = [matrix_spec(layer) for layer in layers]
    if len(parts) == 1:
        return parts[0]
    specs, biases = [p[0] for p in parts], [p[1] for p in parts]
    values = np.concatenate([s[3] for s in specs])
    scales = None if specs[0][4] is None else np.concatenate([s[4] for s in specs])
    bias = None
    if any(b is not None for b in biases):
        bias = np.concatenate([np.zeros(s[1], np.float32) if b is None else b
                               for s, b in zip(specs, biases, strict=True)])  # fmt: skip
    return (specs[0][0], values.shape[0], values.shape[1], values, scales, None), bias


def layer_entry(block: nn.Module) -> tuple:
    """One block's entry for ``_decode.create`` (its matrices, norms and biases)."""
    attn, mlp = block.attn, block.mlp
    qkv = stacked_spec([attn.qkv] if attn.qkv is not None else [attn.q, attn.k, attn.v])
    (o, o_bias), (up, up_bias), (down, down_bias) = map(matrix_spec, (attn.o, mlp.up, mlp.down))
    norms = [float_vector(n.weight) for n in (block.attn_norm, block.mlp_norm)]
    norm_biases = [float_vector(n.bias) for n in (block.attn_norm, block.mlp_norm)]
    return (qkv[0], o, up, down, *norms, None, None, *norm_biases, qkv[1], o_bias, up_bias,
            down_bias)  # fmt: skip


def _layers(blocks: list):
    """Each block's entry for ``_decode.create``, the block dropped once it is taken."""
    while blocks:
        yield layer_entry(blocks.pop(0))


def int8_layers(blocks: nn.ModuleList) -> bool:
    """Whether every linear layer of ``blocks`` is an ``Int8Rows`` (what the kernel copies)."""
    from .compute_layers import Int8Linear, Int8Rows

    linears = [m for m in blocks.modules() if isinstance(m, nn.Linear | Int8Linear | Int8Rows)]
    return bool(linears) and all(isinstance(m, Int8Rows) for m in linears)


class NativeEncoder:
    """``core._decode``'s encoder over ``blocks`` (which are emptied: the kernel's copies are
    the ones kept); ``run(x, mask)`` as ``Transformer.forward`` for a non-causal body."""

    def __init__(self, cfg: TransformerConfig, blocks: nn.ModuleList) -> None:
        from .quantized import threads

        dims = (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim,
                cfg.max_positions)  # fmt: skip
        entries = list(blocks)
        del blocks[:]  # each block goes once the kernel has copied it: one int8 copy at a time
        self.nbytes = sum(_bytes(block) for block in entries)
        flags = LAYER_NORM | NORM_AFTER | GELU | ENCODER
        self._model = _decode.create(dims, float(cfg.norm_eps), flags, threads(), None, None,
                                     None, None, _layers(entries))  # fmt: skip

    def run(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The body's output (B, T, C) for embedded input ``x`` (B, T, C); ``mask`` True = a real
        token, (B, T) or (B, 1, 1, T) (None: all real). Real tokens need not come first: rows
        whose padding is not at the end are reordered (attention does not see the order: the
        positions are in ``x`` already) and put back."""
        B, T, C = x.shape
        order, sizes = None, np.full(B, T, np.int32)
        if mask is not None:
            keep = _real_tokens(mask, B, T)
            lengths = keep.sum(dim=1)
            if not bool((keep == (torch.arange(T) < lengths[:, None])).all()):
                order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[..., None]
                x = torch.gather(x, 1, order.expand(B, T, C))
            sizes = np.ascontiguousarray(lengths.clamp(min=1).numpy(), np.int32)
        out = np.array(x.detach().to(torch.float32).numpy(), np.float32, order="C")  # written
        _decode.encode(self._model, out, B, T, sizes)
        h = torch.from_numpy(out)
        return h if order is None else torch.empty_like(h).scatter_(1, order.expand(B, T, C), h)


def _real_tokens(mask: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """(B, T) bool: which tokens are real."""
    if mask.dim() == 4 and mask.shape[1] == mask.shape[2] == 1:
        mask = mask[:, 0, 0]
    if tuple(mask.shape) != (B, T):
        raise InputError(
            f"an encoder's mask is (B, T) = ({B}, {T}) or (B, 1, 1, T), got {tuple(mask.shape)}; "
            "pass which tokens are real, one row a sequence"
        )
    return mask.bool().cpu()


def _bytes(block: nn.Module) -> int:
    """Bytes the kernel holds for one block: int8 weights, a float32 scale a row, biases and
    norms in float32."""
    from .compute_layers import Int8Rows

    total = sum(p.numel() * 4 for p in block.parameters())  # norms (the linears' are not)
    for m in block.modules():
        if isinstance(m, Int8Rows):
            total += m.out_features * (m.in_features + 4 + 4)
    return total
