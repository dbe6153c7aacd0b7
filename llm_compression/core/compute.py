"""Compute modes: one parser for ``dtype=`` and one place that converts a built model for it.

``dtype`` is accepted as a string or a torch dtype by ``load_model``, ``CLIPEngine``,
``MultimodalEmbeddingProvider`` and the CLI's ``--dtype``:

- ``"float32"`` (default, exact: every parity threshold holds): on the CPU, where torch has
  oneDNN, each ``nn.Linear`` runs on oneDNN's packed float32 weight (``Float32Linear``), q, k and
  v as one matmul and CLIP's quick_gelu as one silu: the same products summed in another order
  (relative difference ~1e-6 to torch's own ops; 1.2-1.7x their speed on an AMD EPYC, decision
  0017). Elsewhere (a GPU, no oneDNN) the model as loaded, torch's own ops. On oneDNN an MLP's
  GELU / SiLU runs as its up projection's post-op (``activated``) and a block's residual is
  added in its output projection's kernel (``added``).
- ``"bfloat16"``: every ``nn.Linear`` keeps its weight in bfloat16 and multiplies in bfloat16
  (oneDNN's AVX512_BF16 kernels); norms, softmax, activations and the residual stream stay
  float32, so the error is the matmuls' alone (relative L2 ~ 0.003 on CLIP).
- ``"int8"``: every ``nn.Linear`` becomes torch's dynamic int8 linear (weights int8 per output
  channel, activations quantized per batch; oneDNN's AMX kernels or fbgemm's VNNI ones, see
  ``int8_engine``). An int8 file's weights are stored per output row already, so re-quantizing
  them is lossless up to rounding. Token tables read only by lookups (a family's
  ``lookup_tables``) become int8 rows too, and a tied output projection packs those rows. A
  BERT body then moves into our C kernel where it runs (``Transformer.compute_converted``,
  ``core.native_encoder``: one call a batch, activations a group of 32, each row alone;
  decision 0016).
- ``"float16"``: the whole model cast (kept for the causal LMs; slow on CPUs without AVX512_FP16).

Example
-------
>>> parse_dtype("bf16"), parse_dtype(torch.qint8)
('bfloat16', 'int8')
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

COMPUTE_DTYPES = ("float32", "bfloat16", "int8", "float16")
_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "int8": "int8", "qint8": "int8", "i8": "int8",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}  # fmt: skip
_TORCH = {
    torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
    torch.int8: "int8", torch.qint8: "int8",
}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> str:
    """The compute mode named by ``dtype`` ("float32", "bfloat16", "int8" or "float16").

    Accepts the names above (case-insensitive, "bf16"/"fp32"/"qint8" too), torch dtypes and None
    (float32). Raises InputError naming the accepted values."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, torch.dtype) and dtype in _TORCH:
        return _TORCH[dtype]
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in _ALIASES:
        return _ALIASES[dtype.strip().lower().removeprefix("torch.")]
    raise InputError(
        f"dtype must be one of {', '.join(map(repr, COMPUTE_DTYPES[:3]))} (or a torch dtype: "
        f"torch.float32, torch.bfloat16, torch.int8), got {dtype!r}; float32 is exact, "
        "bfloat16 ~2x faster, int8 ~4x faster and 4x smaller"
    )


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


def activated(layer: nn.Module, x: torch.Tensor, act: Callable) -> torch.Tensor:
    """``act(layer(x))``, the activation fused into the kernel where ``layer`` has one."""
    if isinstance(layer, OneDNNLinear):
        return layer.activated(x, act)
    return act(layer(x))


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
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = table.embedding_dim, table.num_embeddings
        layer._pack_rows(table.rows(), None)
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


def _replace_linears(model: nn.Module, make, fill, prefix: str = "") -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            if fill is not None:  # this layer's weights, decoded just before it is converted
                names = [f"{prefix}{name}.{p}" for p, _ in child.named_parameters()]
                found = fill(names)
                child.load_state_dict({n.rsplit(".", 1)[1]: found[n] for n in names}, assign=True)
            setattr(model, name, make(child))
        else:
            _replace_linears(child, make, fill, f"{prefix}{name}.")


def linear_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the model's ``nn.Linear`` layers (what the modes convert)."""
    return [
        f"{name}.{p}"
        for name, layer in model.named_modules()
        if isinstance(layer, nn.Linear)
        for p, _ in layer.named_parameters()
    ]


def apply_compute(
    model: nn.Module, dtype: str | torch.dtype | None, *, fill: Callable | None = None
) -> nn.Module:
    """Convert a loaded (float32) model in place for compute mode ``dtype``; returns it.

    ``nn.Linear`` layers change (float32 on oneDNN, bfloat16, int8), and in int8 the lookup
    tables a module names in ``lookup_tables`` (int8 rows, ``Int8Embedding``); norms,
    convolutions, position tables and other embeddings stay as loaded. ``model.compute_dtype``
    records the mode. ``fill(names)``, if given, returns ``{name: float32 tensor}`` for one
    linear layer's parameters still on the meta device, so a loader can decode layer by layer
    and the float32 copy of the whole model never exists (peak: the converted layers plus one
    float32 layer).

    float32 takes no ``fill`` (the loader decodes it whole: it is the compute dtype); its
    ``compute_converted`` hooks run on the float32 layers, before each is packed once.

    A model may say how each of its parts computes in a mode: ``model.compute_plan(mode)``
    returns ``{submodule name: mode}`` (Whisper: int8 decodes in int8 and encodes in bfloat16).
    After a part's linear layers are converted, each of its modules that has
    ``compute_converted(mode)`` is called, for what is not an ``nn.Linear`` (a tied output
    projection), each after the modules it holds (a body sees its blocks converted)."""
    mode = parse_dtype(dtype)
    plan = model.compute_plan(mode) if hasattr(model, "compute_plan") else {"": mode}
    for name, part_mode in plan.items():
        part = model.get_submodule(name)
        _convert_part(part, parse_dtype(part_mode), fill, f"{name}." if name else "")
    model.compute_dtype = mode
    return model


def _convert_part(part: nn.Module, mode: str, fill: Callable | None, prefix: str) -> None:
    if mode == "float32":  # loaded whole (fill unused): the hooks join and fold, then one pack
        if _packs_float32(part):
            _call_hooks(part, mode)
            _replace_linears(part, Float32Linear, None, prefix)
        return
    if mode == "bfloat16":
        _replace_linears(part, BFloat16Linear, fill, prefix)
    elif mode == "int8":
        _convert_lookups(part)  # first: the float32 tables go before the int8 layers pile up
        for name, body in part.named_modules():  # bodies our C kernel runs: no torch packing
            if getattr(body, "runs_natively", lambda m: False)(mode):
                where = f"{prefix}{name}." if name else prefix
                _replace_linears(body.layers, Int8Rows, fill, f"{where}layers.")
        torch.backends.quantized.engine = int8_engine()  # Int8Linear prepacks for it
        _replace_linears(part, Int8Linear, fill, prefix)
    elif mode == "float16":
        part.to(torch.float16)
    _call_hooks(part, mode)
    if mode == "int8" and getattr(part, "decodes_steps", False):
        _pack_for_steps(part)


def _packs_float32(part: nn.Module) -> bool:
    """Whether float32 goes onto oneDNN's packed kernels here: the part's linear layers are
    ``_onednn_float32`` (elsewhere float32 stays torch's own ops, untouched)."""
    weight = next((m.weight for m in part.modules() if isinstance(m, nn.Linear)), None)
    return weight is not None and _onednn_float32(weight)


def _onednn_float32(t: torch.Tensor) -> bool:
    """Whether ``t`` is float32 on the CPU of a torch that has oneDNN."""
    return (
        t.device.type == "cpu" and t.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    )


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether gradients flow to ``x`` (oneDNN's matmul has no backward)."""
    return x.requires_grad and torch.is_grad_enabled()


def _call_hooks(part: nn.Module, mode: str) -> None:
    for module in _children_first(part):  # a body sees its layers converted
        if hasattr(module, "compute_converted"):
            module.compute_converted(mode)


def _convert_lookups(part: nn.Module) -> None:
    """int8: the tables a module names in ``lookup_tables`` (read by lookups alone; a tied
    output projection is built from them by ``tied_head``) become int8 rows."""
    for module in list(part.modules()):
        for name in getattr(module, "lookup_tables", ()):
            setattr(module, name, Int8Embedding(getattr(module, name)))


def _children_first(module: nn.Module, seen: set | None = None):
    """``module`` and every module inside it, each after the modules it holds (once each)."""
    seen = set() if seen is None else seen
    for child in list(module.children()):
        if id(child) not in seen:
            yield from _children_first(child, seen)
    seen.add(id(module))
    yield module


def _pack_for_steps(part: nn.Module) -> None:
    """The int8 linears of a part that decodes step by step (``decodes_steps``: Whisper's text
    decoder) see one row per sequence a call: packed for ``int8_engine(few_rows=True)``. A
    cross-attention's keys and values project the encoder output (1500 rows) once: they stay."""
    memory = {id(getattr(m, name)) for m in part.modules() if getattr(m, "cross", False)
              for name in ("k", "v")}  # fmt: skip
    engine = int8_engine(few_rows=True)
    if engine == int8_engine():
        return
    for layer in part.modules():
        if isinstance(layer, Int8Linear) and id(layer) not in memory:
            layer.repack(engine)


def converted_linear(weight: torch.Tensor, mode: str) -> nn.Module | None:
    """``x @ weight^T`` (no bias) as the linear layer of compute mode ``mode``; None for float32
    and float16 (the plain matmul is that mode's). For tied output projections."""
    make = {"bfloat16": BFloat16Linear, "int8": Int8Linear}.get(mode)
    if make is None:
        return None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return make(layer)


def tied_head(table: nn.Module, mode: str) -> nn.Module | None:
    """The output projection tied to lookup table ``table`` in compute mode ``mode``: an int8
    table's own rows, else ``converted_linear`` of its weight (None: the plain matmul)."""
    if isinstance(table, Int8Embedding):
        return Int8Linear.from_table(table)
    return converted_linear(table.weight, mode)


def tied_logits(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``h @ table^T`` for an output projection tied to a token table: on the CPU in float32,
    oneDNN's matmul on the table as it is (no copy; 2-2.5x MKL's GEMV on an AMD EPYC: SmolLM2's
    576 -> 49152 11.2 -> 5.4 ms, decision 0017), else ``F.linear``."""
    if _onednn_float32(table) and h.dtype == torch.float32 and not _needs_grad(h):
        return torch.ops.mkldnn._linear_pointwise(h, table, None, "none", [], "")
    return F.linear(h, table)


def compute_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take in its compute mode (int8 layers: 1 byte a weight + scales)."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    total += sum(t.numel() * t.element_size() for t in model.buffers())
    for layer in model.modules():
        if isinstance(layer, Int8Linear):
            total += layer.out_features * (layer.in_features + 4 + 4)  # int8 rows, scale, bias
        elif isinstance(layer, OneDNNLinear) and layer.weight is None:  # the oneDNN-packed weight
            total += layer.out_features * layer.in_features * layer.io_dtype.itemsize
        native = getattr(layer, "native", None)  # an int8 body's copy in our C kernel
        total += getattr(native, "nbytes", 0)
    return total
