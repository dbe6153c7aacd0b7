"""Our own modules -> ONNX graphs whose weights are placeholders named after the tensor rows.

``export_graphs(config)`` traces each modality method of the family's model
(``encode_text(ids, mask)``, ``encode_image(pixels)``, ``encode_audio(mel, frames)``) with
``torch.onnx.export`` (the TorchScript exporter: no constant folding, ``export_params=False``,
so every parameter is a graph input named by its canonical name). Each such input becomes an
initializer with external data: shape and type only, a few bytes, filled at run time from the
weight file's rows (``SessionOptions.add_external_initializers``). The whole graph of
all-MiniLM-L6-v2 is ~90 KB; of CLIP ViT-B/32 ~0.2 MB per tower. In the float32 graph each
``MatMul(x, Transpose(W))`` becomes ``FusedMatMul(x, W, transB=1)`` (``transposed_weights``): ORT
reads the row as stored instead of folding a transposed copy at session start. Each attention
whose mask ONNX Runtime's ``MultiHeadAttention`` can express (none, causal, padding on keys) is
traced as that one fused node (``_MultiHeadAttention``).

A second graph per modality computes the linear layers in int8 (``int8_graph``): each
``MatMul(x, Transpose(W))`` or ``Gemm(x, W, transB=1)`` over a weight becomes ONNX Runtime's
``DynamicQuantizeMatMul`` (activations quantized per call to uint8, VNNI kernels) with the
int8 weight ``W#int8t`` (in, out) and its per-output-channel ``W#scale``, the bias folded in.

Needs torch and onnx: only run when a graph is not yet in the weight file or the cache
(``graphs.py``). Decision 0010.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

from ..families import build_model, config_to_dict, family
from .graphs import (
    GRAPH_VERSION,
    INFO,
    INT8_ROWS,
    INT8_SCALE,
    INT8_WEIGHT,
    check_exportable,
    graph_name,
)

log = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization
MS = "com.microsoft"  # ONNX Runtime's contrib ops
# modality -> (method, input names, dynamic axes)
PARTS = {
    "text": ("encode_text", ("ids", "mask"), {"ids": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}}),
    "image": ("encode_image", ("pixels",), {"pixels": {0: "B"}}),
    "audio": ("encode_audio", ("mel", "frames"), {"mel": {0: "B"}, "frames": {0: "B"}}),
}


class _Method(torch.nn.Module):
    """``model.<method>`` as a module's forward, for the exporter."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(*args)


def _example(model: Any, modality: str) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with; the text mask pads row 1 so the padded-attention branch is traced."""
    cfg = model.config
    if modality == "text":
        ids = torch.arange(1, 9).repeat(2, 1) % max(2, min(model.text_context, 8) + 1)
        mask = torch.ones_like(ids)
        mask[1, -2:] = 0
        return ids, mask
    if modality == "image":
        return (torch.zeros(1, 3, cfg.image_size, cfg.image_size),)
    return torch.zeros(1, cfg.n_mels, cfg.n_frames), torch.tensor([cfg.n_frames // 4])


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """SDPA as the exporter should see it: ONNX Runtime's fused ``MultiHeadAttention`` where its
    mask can say it (none, causal, or padding on keys only), else the plain product below."""
    _, H, _, D = (int(n) for n in q.shape)  # H, D fixed by the config: constants in the graph
    scale = scale or D**-0.5
    keys_only = attn_mask is None or tuple(attn_mask.shape[1:3]) == (1, 1)  # (B, 1, 1, S)
    if keys_only and not (is_causal and attn_mask is not None) and k.shape[1] == H:
        return _MultiHeadAttention.apply(q, k, v, attn_mask, scale, H, bool(is_causal))
    return _plain_attention(q, k, v, attn_mask, is_causal, scale)


def _plain_attention(q, k, v, attn_mask, is_causal, scale):
    """``softmax(q k^T * scale) v`` with the scale a constant (the exporter's own SDPA computes
    it from the shape with two Sqrt nodes per layer) and no NaN guard (a masked key never leaves
    a query with nothing: padding is on keys only, the causal diagonal stays)."""
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2], scores.shape[-1]
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class _MultiHeadAttention(torch.autograd.Function):
    """Traced as one ``com.microsoft::MultiHeadAttention`` node (q, k, v as (B, T, H*D), the
    padding mask as ``key_padding_mask`` (B, S) int32, causal as ``unidirectional``) in place
    of the ~10 nodes per layer of the plain product (transposes, two products, Where, Softmax).
    Same values: ORT folds the scale of the plain product into its ``q k^T`` GEMM, as the fused
    op does (float32 outputs equal bit for bit on MiniLM)."""

    @staticmethod
    def forward(ctx, q, k, v, keep, scale, heads, causal):  # the traced values
        return _plain_attention(q, k, v, keep, causal, scale)

    @staticmethod
    def symbolic(g, q, k, v, keep, scale, heads, causal):
        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        def merged(x):  # (B, H, T, D) -> (B, T, H*D)
            before = _before_head_split(x)
            if before is not None:
                return before
            return g.op("Reshape", g.op("Transpose", x, perm_i=[0, 2, 1, 3]), const([0, 0, -1]))

        inputs = [merged(q), merged(k), merged(v)]
        if keep is not None:  # (B, 1, 1, S) bool -> (B, S) int32, after an empty bias input
            inputs.append(g.op("Cast", g.op("Reshape", keep, const([0, -1])), to_i=6))
        y = g.op(f"{MS}::MultiHeadAttention", *inputs, num_heads_i=heads, scale_f=scale,
                 unidirectional_i=int(causal))  # fmt: skip
        y = g.op("Reshape", y, const([0, 0, heads, -1]))
        return g.op("Transpose", y, perm_i=[0, 2, 1, 3])  # (B, H, T, D), as SDPA returns


def _before_head_split(x: Any) -> Any:
    """The (B, T, H*D) value that ``Attention._heads`` split into ``x`` (B, H, T, D) with a
    Reshape and a Transpose(0, 2, 1, 3), else None: the fused node reads it as it is (ORT ran
    a Reshape pair of ~6 us per head split at batch 1)."""
    transpose = x.node()
    perm = getattr(transpose, "is")  # Node.is, the int-list attribute getter, is a keyword
    if transpose.kind() != "onnx::Transpose" or perm("perm") != [0, 2, 1, 3]:
        return None
    split = transpose.input().node()
    if split.kind() != "onnx::Reshape":
        return None
    source = split.inputsAt(0)
    rank = source.type().dim() if hasattr(source.type(), "dim") else None
    return source if rank == 3 else None


def _mask_after_empty_bias(graph: Any) -> None:
    """MultiHeadAttention's 4th input is the bias and its 5th the padding mask: the tracer
    cannot write an empty input, so the mask is moved to its place here."""
    for node in graph.node:
        if node.op_type == "MultiHeadAttention" and len(node.input) == 4:
            node.input[:] = [*node.input[:3], "", node.input[3]]


def _trace(model: torch.nn.Module, modality: str) -> bytes:
    method, inputs, axes = PARTS[modality]
    buf = io.BytesIO()
    with (
        warnings.catch_warnings(),
        mock.patch.object(F, "scaled_dot_product_attention", _attention),
    ):
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the graph is checked
        torch.onnx.export(
            _Method(model, method), _example(model, modality), buf, dynamo=False,
            export_params=False, do_constant_folding=False, opset_version=OPSET,
            input_names=list(inputs), output_names=["features"], dynamic_axes=axes,
            custom_opsets={MS: 1},
        )  # fmt: skip
    return buf.getvalue()


def _weights_to_placeholders(graph: Any, inputs: tuple[str, ...]) -> list[str]:
    """Graph inputs other than ``inputs`` (the parameters) -> external-data initializers."""
    from onnx import TensorProto

    names = []
    for value in [v for v in graph.input if v.name not in inputs]:
        name = value.name.removeprefix("model.")
        tensor_type = value.type.tensor_type
        dims = [d.dim_value for d in tensor_type.shape.dim]
        init = TensorProto(name=name, data_type=tensor_type.elem_type, dims=dims)
        init.data_location = TensorProto.EXTERNAL
        for key, val in (("location", "weight-file-rows"), ("offset", "0"), ("length", "0")):
            entry = init.external_data.add()
            entry.key, entry.value = key, val
        graph.initializer.append(init)
        graph.input.remove(value)
        names.append(name)
    for node in graph.node:
        node.input[:] = [
            n.removeprefix("model.") if n.startswith("model.") else n for n in node.input
        ]
    return names


def _use_contrib_ops(model_proto: Any) -> None:
    """Declare the ``com.microsoft`` opset once."""
    if all(op.domain != MS for op in model_proto.opset_import):
        model_proto.opset_import.add(domain=MS, version=1)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _weight_of(node: Any, producers: dict[str, Any], weights: set[str]) -> str | None:
    """The weight ``W`` a MatMul multiplies by as ``x @ W.T`` (or a Gemm with transB=1)."""
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        trans_b = attrs.get("transB")
        plain = all(attrs[k].f == 1.0 for k in ("alpha", "beta") if k in attrs)
        ok = trans_b is not None and trans_b.i == 1 and "transA" not in attrs and plain
        return node.input[1] if ok and node.input[1] in weights else None
    if node.op_type != "MatMul":
        return None
    source = producers.get(node.input[1])
    if source is None or source.op_type != "Transpose" or source.input[0] not in weights:
        return None
    perm = [a.ints for a in source.attribute if a.name == "perm"]
    return source.input[0] if not perm or list(perm[0]) == [1, 0] else None


def transposed_weights(model_proto: Any, weights: list[str]) -> None:
    """``MatMul(x, Transpose(W))`` -> ``FusedMatMul(x, W, transB=1)`` (in place): ORT reads the
    weight row as stored instead of constant-folding a transposed copy of every linear weight
    when the session starts."""
    from onnx import helper

    graph = model_proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    dropped: set[int] = set()
    for node in list(graph.node):
        weight = _weight_of(node, producers, set(weights))
        if weight is None or node.op_type != "MatMul":
            continue
        source = producers[node.input[1]]
        if len(consumers[source.output[0]]) == 1:
            dropped.add(id(source))
        fused = helper.make_node("FusedMatMul", [node.input[0], weight], list(node.output),
                                 name=f"{weight}/matmul", domain=MS, transB=1)  # fmt: skip
        graph.node.insert(list(graph.node).index(node), fused)
        dropped.add(id(node))
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    _use_contrib_ops(model_proto)


def int8_graph(model_proto: Any, weights: list[str]) -> list[str]:
    """Rewrite the linear layers of ``model_proto`` to ``DynamicQuantizeMatMul`` (in place).

    Returns the graph's placeholder names afterwards (``W#int8t`` / ``W#scale`` for each
    quantized weight, the other weights unchanged)."""
    from onnx import TensorProto, helper

    graph = model_proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    quantized: dict[str, list[int]] = {}
    dropped: set[int] = set()
    for node in list(graph.node):
        weight = _weight_of(node, producers, set(weights))
        if weight is None or len(shapes[weight]) != 2:
            continue
        bias, output = (node.input[2] if len(node.input) > 2 else ""), node.output[0]
        after = consumers.get(output, [])
        if not bias and len(after) == 1 and after[0].op_type == "Add":
            other = [n for n in after[0].input if n != output]
            if len(other) == 1 and len(shapes.get(other[0], [])) == 1:
                bias, output = other[0], after[0].output[0]
                dropped.add(id(after[0]))
        if node.op_type == "MatMul":
            source = producers[node.input[1]]
            if len(consumers[source.output[0]]) == 1:
                dropped.add(id(source))
        fused = helper.make_node(
            "DynamicQuantizeMatMul",
            [node.input[0], weight + INT8_WEIGHT, weight + INT8_SCALE, "", bias],
            [output], name=f"{weight}/int8", domain=MS,
        )  # fmt: skip
        graph.node.insert(list(graph.node).index(node), fused)
        dropped.add(id(node))
        quantized[weight] = shapes[weight]
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    _swap_placeholders(graph, quantized, TensorProto)
    _use_contrib_ops(model_proto)
    return [i.name for i in graph.initializer if i.data_location == TensorProto.EXTERNAL]


def tables_as_inputs(graph: Any) -> list[str]:
    """Placeholders read only as a ``Gather``'s table (token and position embeddings) -> graph
    inputs (in place), fed at each run; returns their names.

    ONNX Runtime copies every initializer into its own memory when the session starts (and a
    Gather gains nothing from it: no prepacking, nothing to fold), while a run input is read
    where it lies: the runtime keeps the decoded row and ORT never holds a second copy of the
    largest tensors (MiniLM's 47 MB token table, half the model)."""
    from onnx import TensorProto, helper

    consumers = _consumers(graph)
    fed = [
        init for init in graph.initializer
        if init.data_location == TensorProto.EXTERNAL and consumers.get(init.name)
        and all(n.op_type == "Gather" and n.input[0] == init.name for n in consumers[init.name])
    ]  # fmt: skip
    names = [init.name for init in fed]
    for init in fed:
        graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        graph.initializer.remove(init)
    return names


def int8_tables(graph: Any, tables: list[str]) -> list[str]:
    """The fed tables of the int8 graph as int8 rows with a float32 scale per row (in place):
    ``Gather(T, i)`` -> ``Cast(Gather(T#int8r, i)) * Unsqueeze(Gather(T#scale, i), -1)``, so an
    int8 model's embeddings stay int8 in memory (as ``core``'s QuantEmbedding keeps them).
    Returns the new input names."""
    from onnx import TensorProto, helper

    inputs = {value.name: value for value in graph.input}
    names: list[str] = []
    last_axis = helper.make_tensor("int8_tables/last_axis", TensorProto.INT64, [1], [-1])
    graph.initializer.append(last_axis)
    for table in tables:
        dims = [d.dim_value for d in inputs[table].type.tensor_type.shape.dim]
        q, scale = table + INT8_ROWS, table + INT8_SCALE
        graph.input.remove(inputs[table])
        graph.input.append(helper.make_tensor_value_info(q, TensorProto.INT8, dims))
        graph.input.append(helper.make_tensor_value_info(scale, TensorProto.FLOAT, dims[:1]))
        for k, node in enumerate(
            [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]
        ):
            at, tag = list(graph.node).index(node), f"{table}/int8/{k}"
            new = [
                helper.make_node("Gather", [q, node.input[1]], [tag + "/q"], axis=0),
                helper.make_node("Cast", [tag + "/q"], [tag + "/f"], to=TensorProto.FLOAT),
                helper.make_node("Gather", [scale, node.input[1]], [tag + "/s"], axis=0),
                helper.make_node("Unsqueeze", [tag + "/s", last_axis.name], [tag + "/s1"]),
                helper.make_node("Mul", [tag + "/f", tag + "/s1"], list(node.output)),
            ]
            graph.node.remove(node)
            for offset, made in enumerate(new):
                graph.node.insert(at + offset, made)
        names += [q, scale]
    return names


def _swap_placeholders(graph: Any, quantized: dict[str, list[int]], tensor_proto: Any) -> None:
    """Float placeholders of the quantized weights -> int8 (in, out) and float32 (out,) ones."""
    for init in [i for i in graph.initializer if i.name in quantized]:
        out_dim, in_dim = quantized[init.name]
        for suffix, dtype, dims in (
            (INT8_WEIGHT, tensor_proto.INT8, [in_dim, out_dim]),
            (INT8_SCALE, tensor_proto.FLOAT, [out_dim]),
        ):
            new = graph.initializer.add()
            new.CopyFrom(init)
            new.name, new.data_type = init.name + suffix, dtype
            new.dims[:] = dims
        graph.initializer.remove(init)


def export_graphs(config: Any) -> dict[str, bytes]:
    """Every graph of ``config``'s model: ``{graph_name(modality, dtype): bytes, "onnx/info.json"}``.

    The model is built with placeholder weights (only traced: their values are never used).
    """
    import onnx

    check_exportable(config.family)
    spec = family(config.family)
    model = _distinct_weights(build_model(config).to_empty(device="cpu").eval())
    info: dict[str, Any] = {"graph_version": GRAPH_VERSION, "family": spec.name, "parts": {}}
    info["config"] = config_to_dict(config)
    out: dict[str, bytes] = {}
    for modality in spec.modalities:
        proto = onnx.load_from_string(_trace(model, modality))
        _mask_after_empty_bias(proto.graph)
        inputs = PARTS[modality][1]
        float_names = _weights_to_placeholders(proto.graph, inputs)
        float_proto = onnx.ModelProto()
        float_proto.CopyFrom(proto)
        transposed_weights(float_proto, float_names)
        int8_names = int8_graph(proto, float_names)
        fed = {"float32": tables_as_inputs(float_proto.graph)}
        fed["int8"] = int8_tables(proto.graph, tables_as_inputs(proto.graph))
        int8_names = [n for n in int8_names if n not in fed["float32"]] + fed["int8"]
        out[graph_name(modality, "float32")] = float_proto.SerializeToString()
        out[graph_name(modality, "int8")] = proto.SerializeToString()
        info["parts"][modality] = {
            "inputs": list(inputs), "float32": float_names, "int8": int8_names, "fed": fed,
        }  # fmt: skip
    info.update(_facts(model))
    out[INFO] = json.dumps(info, sort_keys=True).encode()
    log.info("exported %s graphs (%d bytes)", spec.name, sum(map(len, out.values())))
    return out


@torch.no_grad()
def _distinct_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Fill each tensor with its own value: the exporter merges inputs holding equal values
    (two zero-filled norms would become one graph input under one of their names)."""
    for i, tensor in enumerate(model.state_dict().values()):
        if tensor.is_floating_point():
            tensor.fill_(1.0 + i / 1024)
    return model


def _facts(model: Any) -> dict[str, Any]:
    """What the provider reads off a model, for a runtime that never builds it."""
    names = ("embedding_dim", "text_context", "normalizes", "empty_text_ok", "samples_per_frame")
    return {name: getattr(model, name) for name in names if hasattr(model, name)}
