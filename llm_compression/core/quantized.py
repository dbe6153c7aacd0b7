"""Linear layers and token embeddings that compute from group-quantized weights (never expanded to
float32), on ONNX Runtime's ``MatMulNBits`` (docs/decisions/0009-quantized-generation.md).

``MatMulNBits`` computes ``y = x @ (d * (q - z))^T`` per group of 32 inputs, with the default zero
point ``z = 2**(bits - 1)``. Our layouts map onto it without touching the values:

- ``int8_group_sym`` (``w = d q``): ``B = q + 128`` as uint8, ``z = 128``.
- ``int4_group_asym`` (``w = d q + m``): ``B`` is the packed ``q`` as stored, ``z = 8``, plus a
  correction ``sum_g xsum[g] * (m + 8 d)[n, g]`` where ``xsum[g]`` sums the inputs of group ``g``:
  a (K / 32)-by-N float32 matmul in the same ONNX graph (float zero points take ORT's slow path:
  27.7 vs 0.44 ms per SmolLM2 layer, measured here).

``accuracy_level=4`` quantizes the activations to int8 per block (VNNI dot products), as llama.cpp
does with Q8 activations.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..weightfile.groupwise import GROUP, QUANT_INT8_GROUP, GroupQuantized

ACCURACY_LEVEL = 4  # int8 activations
_THREADS = {"n": 0}


def set_threads(n: int) -> None:
    """Threads of the ONNX Runtime sessions made after this call (0: torch's thread count)."""
    _THREADS["n"] = n


def threads() -> int:
    """Intra-op threads of a session made now."""
    return _THREADS["n"] or torch.get_num_threads()


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ConfigError(
            "dtype='int8' / 'int4' computes on ONNX Runtime, which is not installed; "
            "`pip install llm_compression[quantized]` (onnxruntime), or load with dtype=torch.float32"
        ) from e
    return onnxruntime


def _weights(w: GroupQuantized) -> dict[str, np.ndarray]:
    """The constant inputs of the graph: ``B``, ``S`` (and ``C``, the int4 offset correction)."""
    n, k = w.shape
    groups = k // GROUP
    if w.quant_type == QUANT_INT8_GROUP:
        b = (w.data.view(np.uint8) ^ np.uint8(0x80)).reshape(n, groups, GROUP)  # q + 128
    else:
        b = w.data.reshape(n, groups, GROUP // 2)
    out = {"B": b, "S": w.scales.astype(np.float32).reshape(-1)}
    if w.offsets is not None:
        c = w.offsets.astype(np.float32) + 8 * w.scales.astype(np.float32)  # (N, G)
        out["C"] = c.T
    return out


def _external(name: str, array: np.ndarray):
    """A graph initializer whose values are handed to ORT at session creation, not serialized."""
    from onnx import TensorProto, helper

    tensor = TensorProto(name=name, dims=array.shape, data_location=TensorProto.EXTERNAL)
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.external_data.add(key="location", value="memory")
    return tensor


def matmul_nodes(
    w: GroupQuantized, prefix: str, a: str, y: str, rank: int = 2
) -> tuple[list, list]:
    """The nodes ``y = a @ w^T`` (``a`` of shape (..., K), ``rank`` axes) and their small constant
    initializers; the matrix inputs are ``{prefix}B``, ``{prefix}S`` (and ``{prefix}C``)."""
    from onnx import helper, numpy_helper

    n, k = w.shape
    groups = k // GROUP
    bits = 8 if w.quant_type == QUANT_INT8_GROUP else 4
    attrs = dict(K=k, N=n, bits=bits, block_size=GROUP, accuracy_level=ACCURACY_LEVEL)
    inputs = [a, f"{prefix}B", f"{prefix}S"]
    if w.offsets is None:
        return [helper.make_node("MatMulNBits", inputs, [y], domain="com.microsoft", **attrs)], []
    p = prefix
    inits = [  # Reshape's 0 keeps that axis: (..., K) -> (..., G, 32)
        numpy_helper.from_array(
            np.array([0] * (rank - 1) + [groups, GROUP], np.int64), f"{p}groups"
        ),
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}axes"),
    ]
    nodes = [
        helper.make_node("MatMulNBits", inputs, [f"{p}Y0"], domain="com.microsoft", **attrs),
        helper.make_node("Reshape", [a, f"{p}groups"], [f"{p}Ag"]),  # (..., G, 32)
        helper.make_node("ReduceSum", [f"{p}Ag", f"{p}axes"], [f"{p}Xs"], keepdims=0),
        helper.make_node("MatMul", [f"{p}Xs", f"{p}C"], [f"{p}Yc"]),  # (..., N)
        helper.make_node("Add", [f"{p}Y0", f"{p}Yc"], [y]),
    ]
    return nodes, inits


def _graph(w: GroupQuantized, weights: dict[str, np.ndarray]) -> bytes:
    """The serialized ONNX model ``Y = MatMulNBits(A) (+ correction)`` of one matrix, its
    ``weights`` declared external (``_session`` supplies them)."""
    from onnx import TensorProto, helper

    n, k = w.shape
    nodes, inits = matmul_nodes(w, "", "A", "Y")
    inits += [_external(name, a) for name, a in weights.items()]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits,
    )  # fmt: skip
    return serialized(graph)


def serialized(graph) -> bytes:
    """The ONNX model of ``graph`` (standard opset 17 + ORT's contrib ops), serialized."""
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


def _mapped(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` in its own anonymous memory map: unmapped when the last reference
    goes, so a read after release faults instead of returning recycled heap."""
    buffer = mmap.mmap(-1, max(array.nbytes, 1))
    out = np.frombuffer(buffer, array.dtype, count=array.size).reshape(array.shape)
    out[...] = array
    return out


def _session(w: GroupQuantized):
    """The ORT session of ``w``. Its matrices reach ORT without a copy (external initializers
    over our buffers); ORT prepacks them into its own layout at creation and never reads them
    again, so they are released once the session exists: ORT's packed copy is the one copy
    (docs/decisions/0009, "Memory")."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads()
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = False  # 211 arenas of their own chunks: +300 MB for SmolLM2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    weights = {name: _mapped(a) for name, a in _weights(w).items()}
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in weights.values()]
    opts.add_external_initializers(list(weights), values)
    return ort.InferenceSession(_graph(w, weights), opts, providers=["CPUExecutionProvider"])


class QuantLinear(nn.Module):
    """``y = x @ w^T (+ bias)`` for a group-quantized ``w`` (out, in); no float copy of ``w``."""

    def __init__(self, w: GroupQuantized, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = w.shape
        self.quant_type = w.quant_type
        self._session = _session(w)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        (y,) = self._session.run(None, {"A": flat.numpy()})
        out = torch.from_numpy(y).view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class QuantEmbedding(nn.Module):
    """A token table kept quantized: ``forward(ids)`` dequantizes only the rows looked up (exactly
    as ``GroupQuantized.dequantize``); ``project(h)`` is the tied LM head on ``MatMulNBits``
    (``head=False``: lookups only, the head computed elsewhere, ``core.decoder_graph``)."""

    def __init__(self, w: GroupQuantized, head: bool = True) -> None:
        super().__init__()
        self.table = w
        self.head = QuantLinear(w) if head else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.table.take_rows(ids.reshape(-1).cpu().numpy())
        out = torch.from_numpy(rows.dequantize())
        return out.view(*ids.shape, self.table.shape[1])

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)
