"""Causal LMs that compute from quantized weights: ``load_model(path, dtype="int8" | "int4")``;
and on the same decoder graph from float32 ones (``load_model(path, backend="onnxruntime")``).

Every linear layer and the token table become ``core.quantized`` modules: group-quantized rows of
the file (int4_group_asym, int8_group_sym: a GGUF's blocks) run as stored, int8_sym_channel rows
keep their values, float rows are quantized to ``dtype`` group-wise on load. Norms and biases are
float32. Nothing is expanded to a float32 matrix (but with dtype float32, where every matrix is
read as float32 and the graph multiplies in float32).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..core.decoder_graph import DecoderGraph, unsupported
from ..core.malloc import release_freed_memory, system_memory_pool
from ..core.native_decoder import NativeDecoder, NativeEmbedding, why_not
from ..core.quantized import QuantEmbedding, QuantLinear
from ..errors import ConfigError
from ..weightfile import WeightFile, decode_tensor
from ..weightfile.groupwise import (
    GROUP,
    GROUP_QUANT_TYPES,
    GroupQuantized,
    from_channel_int8,
    quantize_int4,
    quantize_int8,
)
from . import build_model, quantizable_names

QUANTIZED_DTYPES = ("int8", "int4")
GRAPH_DTYPES = ("float32", *QUANTIZED_DTYPES)  # float32: the decoder graph only
KERNELS = ("native", "onnxruntime")  # what runs a quantized decoder (load_quantized)
log = logging.getLogger(__name__)


def quantized_matrix(file: WeightFile, name: str, dtype: str) -> GroupQuantized | None:
    """The row ``name`` as a group layout, or None when it cannot be one (inputs not a
    multiple of 32)."""
    info = file.tensors[name]
    if len(info.shape) != 2 or info.shape[1] % GROUP:
        return None
    if info.quant_type in GROUP_QUANT_TYPES:
        return file.read_group(info)
    if info.quant_type is not None:  # int8_sym_channel
        return from_channel_int8(*file.read_int8(info))
    w = decode_tensor(file, info)
    return quantize_int4(name, w) if dtype == "int4" else quantize_int8(name, w)


def _graph_matrix(file: WeightFile, name: str, dtype: str) -> GroupQuantized | np.ndarray | None:
    """The row ``name`` as the decoder graph computes it: float32 (N, K) for dtype float32,
    else ``quantized_matrix``'s group layout."""
    if dtype != "float32":
        return quantized_matrix(file, name, dtype)
    w = np.array(decode_tensor(file, name), np.float32)
    return w if w.ndim == 2 else None


def _swap(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


# Matrices that share their input, computed as one (rows concatenated): fewer ORT calls a step.
FUSED = {"attn.qkv": ("attn.q", "attn.k", "attn.v"), "mlp.gate_up": ("mlp.gate", "mlp.up")}


def stacked(mats: list) -> GroupQuantized | np.ndarray | None:
    """The matrices' rows one after the other (exact: the same stored values), or None when
    their layouts or input widths differ."""
    first = mats[0]
    if isinstance(first, np.ndarray):  # float32 (N, K)
        return np.concatenate(mats) if len({m.shape[1] for m in mats}) == 1 else None
    if any(m.quant_type != first.quant_type or m.shape[1] != first.shape[1] for m in mats):
        return None
    offsets = None if first.offsets is None else np.concatenate([m.offsets for m in mats])
    rows = sum(m.shape[0] for m in mats)
    data, scales = (np.concatenate([getattr(m, f) for m in mats]) for f in ("data", "scales"))
    return GroupQuantized(first.quant_type, (rows, first.shape[1]), data, scales, offsets)


def _stack(mats: dict, n_layers: int, biased: set[str]) -> list[str]:
    """Replace q/k/v and gate/up of every layer in ``mats`` by one matrix where they stack;
    the names replaced."""
    gone = []
    for i in range(n_layers):
        for fused, parts in FUSED.items():
            names = [f"layers.{i}.{p}" for p in parts]
            if not all(n in mats for n in names) or any(n in biased for n in names):
                continue
            w = stacked([mats[n] for n in names])
            if w is not None:
                mats[f"layers.{i}.{fused}"] = w
                gone += names
                for n in names:
                    del mats[n]
    return gone


def _decoder_graph(model, mats: dict, state: dict, names: set[str], kernel: str):
    """The whole decoder in one call a step: our C kernel (``core.native_decoder``) where
    ``kernel`` is "native" and it runs this model, else one ORT graph (``core.decoder_graph``);
    None when the model has a part the graph does not run (then every matrix gets its own
    session). The matrices leave ``mats`` (the decoder keeps its own copy: a lower peak), all but
    the token table, which lookups still read."""
    if unsupported(model.config.body) is not None or any(n in state for n in names):
        return None
    floats = {name: value.numpy() for name, value in state.items()}
    head = "lm_head" if "lm_head" in mats else "token_embed"
    taken = {name: mats.pop(name) for name in list(mats) if name != "token_embed"}
    for name in taken:
        _swap(model, name, None)  # computed in the decoder
    if "token_embed" in mats:
        taken["token_embed"] = mats["token_embed"]
    if kernel == "native":
        why = why_not(model.config.body, taken, head)
        if why is None:
            decoder = NativeDecoder(model.config.body, taken, floats, head)
            if head == "token_embed":  # tied: lookups from the decoder's copy, held once
                del mats["token_embed"]
                _swap(model, "token_embed", NativeEmbedding(decoder))
            return decoder
        log.info("the native decoder does not run this model (%s): ONNX Runtime's graph does", why)
    return DecoderGraph(model.config.body, taken, floats, head)


def load_quantized(path, dtype: str, graph: bool = True, kernel: str = "native") -> torch.nn.Module:
    """The causal LM of ``path`` (or of an open ``WeightFile``) with quantized linear layers
    (see the module docstring), or with dtype "float32" its float32 weights on the decoder graph
    (``backend="onnxruntime"``).

    ``graph``: run the whole decoder as one ORT graph where the model allows
    (``model.decoder_graph``; docs/decisions/0011-decoder-graph.md); False: one ORT session per
    matrix, the layers called from torch (the path before the graph, kept for comparison).
    ``kernel``: "native" runs an int8 / int4 decoder in our C kernel where it can
    (``core.native_decoder``: AVX512-VNNI, decision 0015), else on the ORT graph;
    "onnxruntime" always on the ORT graph.
    """
    if kernel not in KERNELS:
        raise ConfigError(f"kernel={kernel!r}: expected one of {KERNELS}")
    if dtype not in GRAPH_DTYPES or (dtype == "float32" and not graph):
        raise ConfigError(
            f"dtype={dtype!r}: the quantized path takes one of {QUANTIZED_DTYPES}, and float32 "
            "with the decoder graph (graph=True)"
        )
    file = path if isinstance(path, WeightFile) else WeightFile(path)
    from . import config_from_dict, family

    config = config_from_dict(file.metadata.config)
    if "generate" not in family(config.family).tasks:
        raise ConfigError(
            f"{path}: dtype={dtype!r} runs causal LMs; this is a {config.family} model: load it "
            "with dtype='float32', 'bfloat16' or 'int8'"
        )
    model = build_model(config)
    names = quantizable_names(model)
    state, mats = {}, {}
    if dtype == "float32" and (why := unsupported(config.body)):
        raise ConfigError(
            f"{path}: backend='onnxruntime' runs a causal LM as one decoder graph, which does "
            f"not run this one ({why}); use backend='torch'"
        )
    with system_memory_pool():
        for name in [n for n in file.tensors if not n.startswith("unused/")]:
            w = _graph_matrix(file, name, dtype) if name in names else None
            if w is None:
                state[name] = torch.from_numpy(np.array(decode_tensor(file, name), np.float32))
            else:
                mats[name.removesuffix(".weight")] = w
    biased = {n.removesuffix(".bias") for n in state if n.endswith(".bias")}
    for name in _stack(mats, len(model.layers), biased):
        _swap(model, name, None)
    kernel = "onnxruntime" if dtype == "float32" else kernel
    model.decoder_graph = _decoder_graph(model, mats, state, names, kernel) if graph else None
    for module_name, w in mats.items():
        if isinstance(w, np.ndarray):  # float32: the token table (the graph took the rest)
            _swap(model, module_name, torch.nn.Embedding.from_pretrained(torch.from_numpy(w)))
        elif module_name == "token_embed":
            _swap(model, module_name, QuantEmbedding(w, head=model.decoder_graph is None))
        else:
            _swap(model, module_name, QuantLinear(w, state.pop(module_name + ".bias", None)))
    for name, value in state.items():  # norms, biases of float layers
        module_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(module_name)
        if isinstance(owner, QuantLinear):
            owner.bias = torch.nn.Parameter(value, requires_grad=False)
        else:
            setattr(owner, attr, torch.nn.Parameter(value, requires_grad=False))
    model.eval()
    release_freed_memory()
    model.torch_threads = 1  # the matmuls run on ORT's threads (core.generation.torch_threads)
    return model
