"""The whole decoder of a causal LM as one ONNX Runtime graph: one ``run`` a step.

Per-matrix sessions (``core.quantized``) cost ~0.26 ms of ORT call overhead each, 121 calls a
SmolLM2 token (docs/decisions/0011-decoder-graph.md). This graph holds every layer, built with
``onnx.helper`` from the config, of ORT's maintained operators:

- ``MatMulNBits`` for every quantized matrix (the same inputs as ``core.quantized``, handed to
  ORT as external initializers over our buffers: ORT's prepacked copy is the one copy); a
  float32 matrix (``backend="onnxruntime"``, dtype float32) as ``FusedMatMul`` with ``transB``;
- ``SimplifiedLayerNormalization`` for RMSNorm (OLMo-2's post-norms and its q/k norms over the
  full projections); Llama's pre-norms as ``SkipSimplifiedLayerNormalization``, each residual
  add fused with the norm after it (one node instead of two);
- ``GroupQueryAttention`` (com.microsoft) with rotary positions from cos/sin tables (HF's
  ``rotate_half`` convention) and the KV cache in place: ``past_key`` and ``present_key`` are
  bound to the same buffer (``KVCache.k`` of one layer), so keys are written where they live;
  it takes the fused qkv projection packed (no ``Split``) where no q/k norm comes between.
  Each row's keys sit at positions ``0 .. length - 1`` of its cache row; ``seqlens_k`` gives
  every row its own length (its rotary position and how far it attends).

Inputs: ``inputs_embeds`` (B, S, C), ``seqlens_k`` (B,) int32 (past + own length - 1 per
row), ``total_sequence_length`` () int32, ``logit_positions`` (B, T, 1) int64 (the positions of
each row whose logits are wanted), ``past_key_{i}`` / ``past_value_{i}`` (B, KV, L, D).
Outputs: ``logits`` (B, T, V) and ``present_key_{i}`` / ``present_value_{i}``.

A first prompt (no past) may be a right-padded batch: row ``b`` holds ``lengths[b]`` real
tokens, GroupQueryAttention attends over them only (``seqlens_k``), and the padding's keys
written past them are overwritten by the row's next tokens before anything reads them.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..config import TransformerConfig
from ..errors import InputError
from ..weightfile.groupwise import GroupQuantized
from .attention import Rotary
from .quantized import _external, _mapped, _ort, _weights, matmul_nodes, serialized, threads


def unsupported(cfg: TransformerConfig) -> str | None:
    """Why the graph cannot run a decoder of ``cfg`` (None: it can)."""
    checks = {
        "norm is not rmsnorm": cfg.norm != "rmsnorm",
        "norms are not pre / sandwich_post": cfg.norm_placement not in ("pre", "sandwich_post"),
        "activation is not swiglu": cfg.activation != "swiglu",
        "positions are not rotary": cfg.positions != "rotary",
        "layers have biases": cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias,
        "clip_qkv is set": cfg.clip_qkv is not None,
        "it has cross-attention": cfg.cross_attention,
        "it has no final norm": not cfg.final_norm,
        "head_dim is not a multiple of 16 (GroupQueryAttention's CPU kernel)": cfg.head_dim % 16,
    }
    reasons = [why for why, bad in checks.items() if bad]
    return "; ".join(reasons) or None


class _Builder:
    """Nodes, small constants and the external matrices of the graph being built."""

    def __init__(self, cfg: TransformerConfig, floats: dict[str, np.ndarray]) -> None:
        self.cfg, self.floats = cfg, floats
        self.nodes, self.inits, self.external = [], [], {}
        self.count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        from onnx import helper

        self.count += 1
        outs = [f"{op}_{self.count}_{j}" for j in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, w: GroupQuantized | np.ndarray, name: str, x: str) -> str:
        """``x @ w^T``; ``w``'s inputs become external initializers named ``{name}.B`` etc.
        (a float32 (N, K) matrix: ``{name}.W``, read transposed by ``FusedMatMul``)."""
        from onnx import helper

        self.count += 1
        y = f"{name}_out_{self.count}"
        if isinstance(w, np.ndarray):
            self.nodes.append(helper.make_node(
                "FusedMatMul", [x, f"{name}.W"], [y], domain="com.microsoft", transB=1
            ))  # fmt: skip
            self.external[f"{name}.W"] = w
            return y
        nodes, inits = matmul_nodes(w, f"{name}.", x, y, rank=3)  # (B, S, K)
        self.nodes += nodes
        self.inits += inits
        self.external |= {f"{name}.{k}": _mapped(a) for k, a in _weights(w).items()}
        return y

    def norm(self, name: str, x: str) -> str:
        """RMSNorm over the last axis with the float weight ``{name}.weight``."""
        weight = self.const(f"{name}.weight", self.floats[f"{name}.weight"].astype(np.float32))
        return self.node("SimplifiedLayerNormalization", [x, weight], axis=-1,
                         epsilon=float(self.cfg.norm_eps))  # fmt: skip

    def add_norm(self, name: str, y: str, x: str) -> tuple[str, str]:
        """(RMSNorm of ``x + y`` with the weight ``{name}.weight``, ``x + y``): one
        ``SkipSimplifiedLayerNormalization`` node instead of an ``Add`` and a norm."""
        from onnx import helper

        weight = self.const(f"{name}.weight", self.floats[f"{name}.weight"].astype(np.float32))
        self.count += 1
        normed, total = f"skipnorm_{self.count}", f"residual_{self.count}"
        self.nodes.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [y, x, weight], [normed, "", "", total],
            domain="com.microsoft", epsilon=float(self.cfg.norm_eps),
        ))  # fmt: skip
        return normed, total

    def split(self, x: str, sizes: list[int]) -> list[str]:
        name = self.const(f"split_{self.count}", np.array(sizes, np.int64))
        return self.node("Split", [x, name], len(sizes), axis=-1)


def _projections(b: _Builder, mats: dict, widths: dict[str, int], fused: str, x: str) -> list:
    """The outputs of the matrices named in ``widths`` (name -> output width) on ``x``: one
    matmul, split, when their stacked matrix ``fused`` is loaded."""
    if fused in mats:
        return b.split(b.linear(mats[fused], fused, x), list(widths.values()))
    return [b.linear(mats[n], n, x) for n in widths]


def _attention(b: _Builder, mats: dict, i: int, x: str) -> str:
    cfg, p = b.cfg, f"layers.{i}.attn."
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    if f"{p}qkv" in mats and not cfg.qk_norm:  # GroupQueryAttention splits a packed qkv itself
        qkv = [b.linear(mats[f"{p}qkv"], f"{p}qkv", x), "", ""]
    else:
        widths = {f"{p}q": q_dim, f"{p}k": kv_dim, f"{p}v": kv_dim}
        qkv = _projections(b, mats, widths, f"{p}qkv", x)
    if cfg.qk_norm:
        qkv[:2] = b.norm(f"{p}q_norm", qkv[0]), b.norm(f"{p}k_norm", qkv[1])
    inputs = [*qkv, f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length",
              "cos_cache", "sin_cache"]  # fmt: skip
    out = f"attention_{i}"
    b.nodes.append(_gqa(inputs, [out, f"present_key_{i}", f"present_value_{i}"], cfg))
    return b.linear(mats[f"{p}o"], f"{p}o", out)


def _gqa(inputs: list[str], outputs: list[str], cfg: TransformerConfig):
    from onnx import helper

    return helper.make_node(
        "GroupQueryAttention", inputs, outputs, domain="com.microsoft", num_heads=cfg.n_heads,
        kv_num_heads=cfg.n_kv_heads, do_rotary=1, rotary_interleaved=0,
    )  # fmt: skip


def _mlp(b: _Builder, mats: dict, i: int, x: str) -> str:
    p, width = f"layers.{i}.mlp.", b.cfg.mlp_dim
    gate, up = _projections(b, mats, {f"{p}gate": width, f"{p}up": width}, f"{p}gate_up", x)
    silu = b.node("Mul", [gate, b.node("Sigmoid", [gate])])
    return b.linear(mats[f"{p}down"], f"{p}down", b.node("Mul", [silu, up]))


def _decoder(b: _Builder, mats: dict) -> str:
    """The final-normed hidden states (B, S, C) of every layer over ``inputs_embeds``: per
    sublayer ``f`` (attention, MLP) ``x + f(norm(x))`` (pre), each residual add fused with the
    next norm, or ``x + norm(f(x))`` (sandwich_post)."""
    sublayers = [(i, f"layers.{i}.{kind}_norm", f) for i in range(b.cfg.n_layers)
                 for kind, f in (("attn", _attention), ("mlp", _mlp))]  # fmt: skip
    x = "inputs_embeds"
    if b.cfg.norm_placement == "sandwich_post":
        for i, norm, f in sublayers:
            x = b.node("Add", [x, b.norm(norm, f(b, mats, i, x))])
        return b.norm("final_norm", x)
    h = b.norm(sublayers[0][1], x)
    following = [norm for _, norm, _ in sublayers[1:]] + ["final_norm"]
    for (i, _, f), norm in zip(sublayers, following, strict=True):
        h, x = b.add_norm(norm, f(b, mats, i, h), x)
    return h


def rotary_tables(cfg: TransformerConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_positions, D / 2): the first half of ``core.attention.Rotary``'s tables
    (its second half repeats the first, ``rotate_half``'s convention; GQA takes one half)."""
    rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_positions)
    cos, sin = rotary(0, cfg.max_positions, "cpu", torch.float32)
    half = cfg.head_dim // 2
    return cos[:, :half].contiguous().numpy(), sin[:, :half].contiguous().numpy()


def _io(cfg: TransformerConfig, vocab: int):
    """The graph's inputs and outputs (value infos)."""
    from onnx import TensorProto, helper

    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    cache = ["B", cfg.n_kv_heads, "L", cfg.head_dim]
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", f, ["B", "S", cfg.dim]),
        helper.make_tensor_value_info("seqlens_k", i32, ["B"]),
        helper.make_tensor_value_info("total_sequence_length", i32, []),
        helper.make_tensor_value_info("logit_positions", TensorProto.INT64, ["B", "T", 1]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f, ["B", "T", vocab])]
    for i in range(cfg.n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", f, cache))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", f, cache))
    return inputs, outputs


def build(cfg: TransformerConfig, mats: dict, floats: dict, head: str):
    """(serialized graph, external matrices by name) of the decoder: ``mats`` by module name
    (``layers.0.attn.qkv``, ...; ``head`` names the LM head's; each a ``GroupQuantized`` or a
    float32 (N, K) array), ``floats`` the norm weights."""
    from onnx import helper

    b = _Builder(cfg, floats)
    cos, sin = rotary_tables(cfg)
    b.const("cos_cache", cos)
    b.const("sin_cache", sin)
    h = _decoder(b, mats)
    h = b.node("GatherND", [h, "logit_positions"], batch_dims=1)  # (B, T, C): those wanted
    logits = b.linear(mats[head], head, h)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    inputs, outputs = _io(cfg, mats[head].shape[0])
    inits = b.inits + [_external(name, a) for name, a in b.external.items()]
    graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, inits)
    return serialized(graph), b.external


def check_positions(past: np.ndarray, own: np.ndarray, length: int, capacity: int) -> None:
    """``run``'s positions against the cache: rows ``past[b] + length`` within ``capacity``,
    rows shorter than the batch (``own``) only in a first prompt."""
    if int(past.max()) + length > capacity:
        raise InputError(
            f"the KV cache holds {capacity} positions but {int(past.max()) + length} were "
            "requested; create the cache with a larger max_len"
        )
    if (own < length).any() and (past.any() or own.min() < 1):
        raise InputError(
            f"rows shorter than the batch's {length} positions (lengths {own.tolist()}) "
            "must be a first prompt (past 0) of at least one token each: GroupQueryAttention "
            "pads only a first prompt"
        )


def check_cache_tensor(t: torch.Tensor, what: str = "KV cache") -> None:
    if not t.is_contiguous() or t.dtype != torch.float32 or t.device.type != "cpu":
        raise InputError(f"the decoder's {what} must be contiguous float32 on the CPU")


class DecoderGraph:
    """The ORT session of ``build``; ``run`` is one decoder pass over a batch. ``mats`` is
    emptied once its matrices are copied for ORT (ORT prepacks the copies and drops them), so
    the caller's dict does not hold a second copy through the session's creation."""

    def __init__(self, cfg: TransformerConfig, mats: dict, floats: dict, head: str) -> None:
        ort = _ort()
        model, external = build(cfg, mats, floats, head)
        mats.clear()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads()
        opts.inter_op_num_threads = 1
        # the second thread spins between a run's ~300 small nodes instead of sleeping and being
        # woken for each (4-9% a token, 0011) and stops when the run returns: nothing spins
        # between steps or after generation, when the caller or other programs want the cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in external.values()]
        opts.add_external_initializers(list(external), values)
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.n_layers, self.vocab = cfg.n_layers, self.session.get_outputs()[0].shape[-1]
        self._ort = ort
        self._bound = threading.local()  # per thread: (cache buffers, IO binding with them bound)

    def run(self, embeds: torch.Tensor, cache: list, past, *, last_only: bool,
            lengths=None) -> torch.Tensor:  # fmt: skip
        """Logits (B, 1 or S, V) of ``embeds`` (B, S, C) after ``past[b]`` tokens of row ``b``
        held in ``cache`` (per layer a (keys, values) pair of float32 (B, KV, L, D) tensors,
        written in place at positions ``past[b] .. past[b] + S - 1``). ``lengths`` (B,): the
        real tokens of each row of a right-padded first prompt (every ``past`` 0); with
        ``last_only`` the logits are those of each row's last real token."""
        past = np.asarray(past, np.int32).reshape(-1)
        length = embeds.shape[1]
        own = np.full_like(past, length) if lengths is None else np.asarray(lengths, np.int32)
        check_positions(past, own, length, cache[0][0].shape[2])
        io = self._binding(cache)
        wanted = (own - 1)[:, None] if last_only else np.arange(length)[None].repeat(len(own), 0)
        logits = np.empty((len(own), wanted.shape[1], self.vocab), np.float32)  # ORT writes here
        io.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        # bind_cpu_input binds the arrays' memory, not the arrays: they must outlive the run
        inputs = {
            "inputs_embeds": embeds.to(torch.float32).contiguous().numpy(),
            "seqlens_k": past + own - 1,
            "total_sequence_length": np.array(past.max() + length, np.int32),
            "logit_positions": np.ascontiguousarray(wanted[..., None], np.int64),  # (B, T, 1)
        }
        for name, array in inputs.items():
            io.bind_cpu_input(name, array)
        self.session.run_with_iobinding(io)
        return torch.from_numpy(logits)

    def _binding(self, cache: list):
        """This thread's IO binding with ``cache`` bound: made again only when the cache's
        buffers change (a new cache, rows leaving a batch), not every step (binding 2 x layers
        buffers cost ~1 ms of a ~11 ms SmolLM2 step)."""
        key = tuple((t.data_ptr(), tuple(t.shape)) for pair in cache for t in pair)
        held = getattr(self._bound, "held", None)
        if held is None or held[0] != key:
            io = self.session.io_binding()
            self._bind_cache(io, cache)
            held = self._bound.held = (key, io)
        return held[1]

    def _bind_cache(self, io, cache: list) -> None:
        """Each layer's past and present bound to the same buffer: ORT writes in place."""
        for i, pair in enumerate(cache):
            for kind, tensor in zip(("key", "value"), pair, strict=True):
                check_cache_tensor(tensor)
                value = self._ort.OrtValue.ortvalue_from_numpy(tensor.numpy())
                io.bind_ortvalue_input(f"past_{kind}_{i}", value)
                io.bind_ortvalue_output(f"present_{kind}_{i}", value)
