"""Compute modes: one parser for ``dtype=`` and one place that converts a built model for it
(the layers each mode runs live in ``core.compute_layers``).

``dtype`` is accepted as a string or a torch dtype by ``load_model``, ``CLIPEngine``,
``MultimodalEmbeddingProvider`` and the CLI's ``--dtype``:

- ``"float32"`` (default, exact: every parity threshold holds): on the CPU, where torch has
  oneDNN, each ``nn.Linear`` runs on oneDNN's packed float32 weight (``Float32Linear``), q, k and
  v as one matmul and CLIP's quick_gelu as one silu: the same products summed in another order
  (relative difference ~1e-6 to torch's own ops; 1.2-1.7x their speed on an AMD EPYC, decision
  0017). Elsewhere (a GPU, no oneDNN) the model as loaded, torch's own ops. On oneDNN an MLP's
  GELU / SiLU runs as its up projection's post-op (``activated``) and a block's residual is
  added in its output projection's kernel (``added``). A causal LM's and Whisper's decoders
  keep plain rows instead where our C kernel runs their steps over views of them
  (``keeps_plain_float32``; decision 0018).
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
  decision 0016), and so does Whisper's text decoder (``core.native_cross``, decision 0018).
- ``"float16"``: the whole model cast (kept for the causal LMs; slow on CPUs without AVX512_FP16).

Example
-------
>>> parse_dtype("bf16"), parse_dtype(torch.qint8)
('bfloat16', 'int8')
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError
from .compute_layers import (
    BFloat16Linear,
    Float32Linear,
    Int8Embedding,
    Int8Linear,
    Int8Rows,
    OneDNNLinear,
    int8_engine,
    onednn_float32,
)

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


def _replace_linears(model: nn.Module, make, fill, prefix: str = "", keep_plain=False) -> None:
    """Every ``nn.Linear`` of ``model`` as ``make(layer)``; ``keep_plain``: not inside modules
    whose ``keeps_plain_float32`` is True (our C kernel views their float32 rows)."""
    if keep_plain and getattr(model, "keeps_plain_float32", False):
        return
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            if fill is not None:  # this layer's weights, decoded just before it is converted
                names = [f"{prefix}{name}.{p}" for p, _ in child.named_parameters()]
                found = fill(names)
                child.load_state_dict({n.rsplit(".", 1)[1]: found[n] for n in names}, assign=True)
            setattr(model, name, make(child))
        else:
            _replace_linears(child, make, fill, f"{prefix}{name}.", keep_plain)


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
            _replace_linears(part, Float32Linear, None, prefix, keep_plain=True)
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
    ``onednn_float32`` (elsewhere float32 stays torch's own ops, untouched)."""
    weight = next((m.weight for m in part.modules() if isinstance(m, nn.Linear)), None)
    return weight is not None and onednn_float32(weight)


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


def compute_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take in its compute mode (int8 layers: 1 byte a weight + scales)."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    total += sum(t.numel() * t.element_size() for t in model.buffers())
    for layer in model.modules():
        if isinstance(layer, Int8Linear):
            total += layer.out_features * (layer.in_features + 4 + 4)  # int8 rows, scale, bias
        elif isinstance(layer, OneDNNLinear) and layer.weight is None:  # the oneDNN-packed weight
            total += layer.out_features * layer.in_features * layer.io_dtype.itemsize
        for held in ("native", "native_steps"):  # an int8 body's copies in our C kernel
            total += getattr(getattr(layer, held, None), "nbytes", 0)
    return total
