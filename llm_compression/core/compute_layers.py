"""The layers the compute modes run (``core.compute`` converts a model to them): float32 and
bfloat16 on oneDNN's packed weights (``Float32Linear``, ``BFloat16Linear``, with their fused
activation and residual sum), int8 rows for torch's dynamic int8 kernels (``Int8Linear``), for
our C kernel (``Int8Rows``) and for lookups (``Int8Embedding``), and the helpers that join,
rescale and tie them."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def onednn_float32(t: torch.Tensor) -> bool:
    """Whether ``t`` is float32 on the CPU of a torch that has oneDNN."""
    return (
        t.device.type == "cpu" and t.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    )


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether gradients flow to ``x`` (oneDNN's matmul has no backward)."""
    return x.requires_grad and torch.is_grad_enabled()


class OneDNNLinear(nn.Module):
    """``y = x W^T + b`` in the subclass's ``io_dtype``, on oneDNN's kernels where torch has them.

    On the CPU the weight is held in oneDNN's blocked layout (``_packed``, what inductor's
    freezing builds) and the bias is the kernel's own: no per-call weight packing and no bias
    copy into the output (CLIP vision b16 -11% time in bfloat16,
    docs/decisions/0008-encoder-speed.md). ``weight`` is then None; ``dense()`` gives the
    values either way. oneDNN's op has no backward: where gradients flow to the input (a frozen
    LM under a trained prompt), the layer multiplies by its dense weight instead."""

    io_dtype = torch.float32  # what the layer computes in and returns (KV caches are made in it)

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        bias = layer.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(self.io_dtype))
        self.bias.requires_grad_(False) if self.bias is not None else None
        self._hold(layer.weight.detach().to(self.io_dtype))

    def _hold(self, weight: torch.Tensor) -> None:
        self._packed = _onednn_packed(weight)
        self.weight = nn.Parameter(weight, requires_grad=False) if self._packed is None else None

    def dense(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (out, in) weight in ``io_dtype`` and the bias (as ``Int8Linear.dense``)."""
        weight = self.weight.detach() if self._packed is None else self._packed.to_dense()
        return weight, self.bias

    @torch.no_grad()
    def rescale_(self, weight_factor: float, bias_factor: float) -> None:
        """Multiply the weight and the bias by constants (folding a scale into the layer)."""
        self._hold(self.dense()[0] * weight_factor)
        if self.bias is not None:
            self.bias.mul_(bias_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.io_dtype)
        if self._packed is None:
            return F.linear(x, self.weight, self.bias)
        if _needs_grad(x):
            return F.linear(x, self._packed.to_dense(), self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def activated(self, x: torch.Tensor, act: Callable) -> torch.Tensor:
        """``act(self(x))``; erf GELU and SiLU run as the kernel's post-op on its output tiles
        (one pass less over the activations; the same values to ~1e-7, decision 0017)."""
        post_op = _POST_OPS.get(act)
        if post_op is None or self._packed is None or _needs_grad(x):
            return act(self(x))
        x = x.to(self.io_dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, *post_op)

    def added(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, the sum in the kernel's output pass where it computes in the
        residual's dtype (float32; bfloat16 returns bfloat16 and adds as before)."""
        x = x.to(self.io_dtype)
        if self._packed is None or residual.dtype != self.io_dtype or _needs_grad(x):
            return residual + self(x)
        return torch.ops.mkldnn._linear_pointwise.binary(
            x, residual, self._packed, self.bias, "add"
        )


class BFloat16Linear(OneDNNLinear):
    """bfloat16 (oneDNN: AMX tiles or AVX512_BF16), y left in bfloat16.

    The output stays bfloat16 so the next elementwise op and linear layer (activation -> down
    projection, q/k/v -> attention -> output projection) take it without a cast; the residual
    stream stays float32 because adding a bfloat16 tensor to it promotes (as torch.autocast)."""

    io_dtype = torch.bfloat16


class Float32Linear(OneDNNLinear):
    """float32 on oneDNN's packed weight: the same products as MKL's ``F.linear`` summed in
    another order (relative difference ~1e-6; every parity threshold holds), 1.1-1.6x its speed
    on an AMD EPYC, where MKL's sgemm is slower (docs/decisions/0017-float32-onednn.md)."""

    io_dtype = torch.float32


def stacked_linear(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing ``layers`` side by side (their output rows one after the other), of
    their type, for layers that share their input (q, k and v); None if they are not all
    ``nn.Linear`` or all of one of ``core.compute``'s kinds. int8 rows keep their int8 values and
    scales."""
    kind = type(layers[0])
    kinds = (nn.Linear, BFloat16Linear, Float32Linear, Int8Linear)
    if kind not in kinds or any(type(x) is not kind for x in layers):
        return None
    parts = [(x.weight, x.bias) if kind is nn.Linear else x.dense() for x in layers]
    weight = torch.cat([w.detach().float() for w, _ in parts])
    joined = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    joined.weight = nn.Parameter(weight, requires_grad=False)
    if any(b is not None for _, b in parts):
        bias = [torch.zeros(w.shape[0]) if b is None else b.detach().float() for w, b in parts]
        joined.bias = nn.Parameter(torch.cat(bias), requires_grad=False)
    return joined if kind is nn.Linear else kind(joined)


@torch.no_grad()
def rescale_linear(layer: nn.Module, weight_factor: float, bias_factor: float) -> None:
    """Multiply a linear layer's weight and bias by constants (folding a scale into it): a
    ``core.compute`` kind's ``rescale_``, or new float32 tensors for an ``nn.Linear`` (its
    decoded weights may be read-only views of the file's buffers)."""
    if not isinstance(layer, nn.Linear):
        layer.rescale_(weight_factor, bias_factor)
        return
    layer.weight = nn.Parameter(layer.weight * weight_factor, requires_grad=False)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias * bias_factor, requires_grad=False)


_POST_OPS = {F.gelu: ("gelu", [], "none"), F.silu: ("swish", [], "")}  # oneDNN's attr, algorithm


# activations rewritten over their input: a layer's fresh output needs no second buffer (CLIP
# int8 b16: 4-7% of a call, the SiLU pass over 800 x 3072 floats writing where it reads)
_IN_PLACE = {F.silu: functools.partial(F.silu, inplace=True), F.gelu: torch.ops.aten.gelu_}


def activated(layer: nn.Module, x: torch.Tensor, act: Callable) -> torch.Tensor:
    """``act(layer(x))``, the activation fused into the kernel where ``layer`` has one, else
    applied in place on the layer's output (not where gradients flow through it)."""
    if isinstance(layer, OneDNNLinear):
        return layer.activated(x, act)
    y = layer(x)
    in_place = _IN_PLACE.get(act)
    return act(y) if in_place is None or _needs_grad(y) else in_place(y)


def added(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``residual + layer(x)`` (``layer(x)`` for no residual), the sum fused where it can be."""
    if residual is None:
        return layer(x)
    if isinstance(layer, OneDNNLinear):
        return layer.added(x, residual)
    return residual + layer(x)


def _onednn_packed(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of a CPU bfloat16 weight, or None (another device, no oneDNN)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    except (AttributeError, RuntimeError, NotImplementedError):  # a torch without the op
        return None


def int8_rows(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, in) as int8 rows: a qint8 tensor, one scale a row (max |row| / 127), no
    zero point."""
    scales = w.abs().amax(dim=1).clamp_min(1e-12).double() / 127.0
    zeros = torch.zeros(w.shape[0], dtype=torch.int64)
    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated (2.13)
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)


class Int8Rows(nn.Module):
    """A linear layer's int8 rows (``int8_rows``) and float32 bias, held for our C kernel to
    copy (``core.native_encoder``): ``Int8Linear``'s values without torch's packing, which holds
    each matrix twice. ``forward`` dequantizes (correct, slow; the kernel is the fast path)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight = int8_rows(layer.weight.detach().float())
        self.bias = None if layer.bias is None else layer.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.dequantize(), self.bias)


class Int8Embedding(nn.Module):
    """A lookup table as int8 rows (``int8_rows``: a float32 scale a row, max |row| / 127), a
    quarter of the float32 table's bytes; a lookup gathers the ids' rows and scales them.
    Quantized ``CHUNK_ROWS`` rows at a time (the float temporaries stay a few MB)."""

    CHUNK_ROWS = 4096

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        weight = table.weight.detach()
        self.num_embeddings, self.embedding_dim = weight.shape
        values = torch.empty(weight.shape, dtype=torch.int8)
        scales = torch.empty(weight.shape[0], dtype=torch.float32)
        for start in range(0, weight.shape[0], self.CHUNK_ROWS):
            rows = int8_rows(weight[start : start + self.CHUNK_ROWS].float())
            values[start : start + self.CHUNK_ROWS] = rows.int_repr()
            scales[start : start + self.CHUNK_ROWS] = rows.q_per_channel_scales()
        self.register_buffer("values", values, persistent=False)
        self.register_buffer("scales", scales, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.values[ids].float() * self.scales[ids].unsqueeze(-1)

    def rows(self) -> torch.Tensor:
        """The table as a qint8 tensor (the same int8 values and scales; no float copy)."""
        zeros = torch.zeros(self.num_embeddings, dtype=torch.int64)
        return torch._make_per_channel_quantized_tensor(self.values, self.scales.double(), zeros, 0)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W int8 per output channel, x quantized per call to 8 bits (uint8,
    asymmetric, full range: VNNI needs no reduced range), packed for ``int8_engine()``."""

    io_dtype = torch.float32

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        bias = None if layer.bias is None else layer.bias.detach().float()
        self._pack(layer.weight.detach().float(), bias)

    def _pack(self, w: torch.Tensor, bias: torch.Tensor | None) -> None:
        self._pack_rows(int8_rows(w), bias)

    def _pack_rows(self, rows: torch.Tensor, bias: torch.Tensor | None) -> None:
        self._packed = torch.ops.quantized.linear_prepack(rows, bias)
        self.engine = torch.backends.quantized.engine  # the kernels it is packed for

    @classmethod
    def from_table(cls, table: Int8Embedding) -> Int8Linear:
        """``x @ table^T`` (a tied output projection) from an int8 table's own rows: the values
        and scales ``Int8Linear`` of the float table would hold, without a float copy."""
        return cls.from_rows(table.rows(), None)

    @classmethod
    def from_rows(cls, rows: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        """The layer of int8 rows ``rows`` (a qint8 tensor, ``int8_rows``) and ``bias``: those
        values packed as they are (an ``Int8Rows`` layer's, or a table's)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = rows.shape
        layer._pack_rows(rows, bias)
        return layer

    def repack(self, engine: str) -> None:
        """The same int8 weights packed for ``engine``'s kernels (exact: no re-quantization;
        the packed weight carries its engine, whatever the global one is when it runs)."""
        qw, bias = torch.ops.quantized.linear_unpack(self._packed)
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)
        finally:
            torch.backends.quantized.engine = before
        self.engine = engine

    @torch.no_grad()
    def rescale_(self, weight_factor: float, bias_factor: float) -> None:
        """Multiply the weight and the bias by constants: the per-row scales absorb the weight's
        factor, so the int8 values stay what they were."""
        weight, bias = self.dense()
        self._pack(weight * weight_factor, None if bias is None else bias * bias_factor)

    def dense(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The dequantized (out, in) weight and the bias, float32."""
        qw, bias = torch.ops.quantized.linear_unpack(self._packed)
        return qw.dequantize(), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=False)


@functools.cache
def int8_engine(few_rows: bool = False) -> str:
    """The quantized engine ``Int8Linear`` prepacks for: oneDNN where the CPU has AMX int8
    (its matmul runs on the AMX tiles: 2.4x fbgemm's speed at 1500 rows, 1.6x at 50, equal
    numerics; docs/decisions/0008-encoder-speed.md), fbgemm's VNNI kernels elsewhere, and for
    layers that see a few rows a call (``few_rows``: decode steps, a row per sequence) fbgemm
    where it exists: 1.7-2x oneDNN's speed from 1 to 16 rows here (0008, "Decode steps")."""
    engines = torch.backends.quantized.supported_engines
    if "onednn" in engines and "amx_int8" in _cpu_flags() and not few_rows:
        return "onednn"
    return "fbgemm" if "fbgemm" in engines else torch.backends.quantized.engine


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())  # fmt: skip
    except OSError:  # not Linux: fbgemm
        return set()


def tied_logits(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``h @ table^T`` for an output projection tied to a token table: on the CPU in float32,
    oneDNN's matmul on the table as it is (no copy; 2-2.5x MKL's GEMV on an AMD EPYC: SmolLM2's
    576 -> 49152 11.2 -> 5.4 ms, decision 0017), else ``F.linear``."""
    if onednn_float32(table) and h.dtype == torch.float32 and not _needs_grad(h):
        return torch.ops.mkldnn._linear_pointwise(h, table, None, "none", [], "")
    return F.linear(h, table)
