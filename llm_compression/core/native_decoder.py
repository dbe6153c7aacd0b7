"""The whole decoder of a group-quantized causal LM in our C kernel (``core._decode``): one call
a step, the int8 / int4 weights streamed as stored (docs/decisions/0015-native-decoder.md); and a
float32 causal LM's decode steps over views of its own weights (``float32_steps``, decision 0018).

The same model, inputs and KV cache as ``core.decoder_graph.DecoderGraph`` (``run`` is a drop-in):
RMSNorm (pre, or OLMo-2's post norms and q / k norms), rotary positions (``rotate_half``), causal
attention over each row's cache, SwiGLU, the head on the wanted positions only. Each matmul
quantizes its input to int8 a group of 32 (as ``MatMulNBits`` with ``accuracy_level=4`` does) and
sums each group's products exactly in int32 (AVX512-VNNI). It runs where the extension is built
and the CPU has AVX512-VNNI; elsewhere (or for a layout it does not take) the ORT graph runs.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch
from torch import nn

from ..config import TransformerConfig
from ..errors import InputError
from ..weightfile.groupwise import GROUP, QUANT_INT8_GROUP, GroupQuantized
from .decoder_graph import check_cache_tensor, check_positions, rotary_tables, unsupported

try:
    from . import _decode
except ImportError:  # built without a C compiler: the ORT graph runs instead
    _decode = None

LAYER_MATRICES = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")
log = logging.getLogger(__name__)


def kernel_why_not() -> str | None:
    """Why no model runs in the kernel on this machine (None: they can): the extension is not
    built, or the CPU lacks what its fast kernel needs."""
    if _decode is None:
        return "the C extension llm_compression.core._decode is not built (no C compiler?)"
    if _decode.kernel() != "avx512":
        return "this CPU lacks AVX512-VNNI (the portable kernel is for tests: ~50x slower)"
    return None


def _config_why_not(cfg: TransformerConfig) -> str | None:
    """Why the kernel cannot run a decoder of ``cfg`` here, whatever its matrices."""
    why = kernel_why_not()
    if why is not None:
        return why
    why = unsupported(cfg)
    return why if why and "head_dim" not in why else None  # that one is GroupQueryAttention's


def why_not(cfg: TransformerConfig, mats: dict, head: str) -> str | None:
    """Why the kernel cannot run this decoder (None: it can): ``mats`` by module name, q / k / v
    and gate / up stacked (``families.quantized.FUSED``), every one group-quantized or every one
    a float32 (rows, cols) array."""
    why = _config_why_not(cfg)
    if why is not None:
        return why
    names = [f"layers.{i}.{m}" for i in range(cfg.n_layers) for m in LAYER_MATRICES] + [head]
    kind = GroupQuantized if isinstance(mats.get(head), GroupQuantized) else np.ndarray
    missing = [n for n in names if not isinstance(mats.get(n), kind)]
    if missing:
        return f"{missing[0]} is not one stacked matrix of the head's kind ({kind.__name__})"
    odd = [n for n in names if mats[n].shape[1] % GROUP]
    return f"{odd[0]}'s inputs are not a multiple of {GROUP}" if odd else None


def matrix_spec(w: GroupQuantized) -> tuple:
    """``w`` as stored, for the kernel to copy into its tiles: (kind, rows, cols, q, scales,
    offsets), q int8 or int4 bytes, scales and offsets float16 where both are (a GGUF's, load-time
    quantization: half the bytes a step streams), else float32 (exact widening); an int8 matrix
    whose groups share their row's float32 scale (an ``int8_sym_channel`` file's) passes one
    scale a row (16 MB less for SmolLM2). A float32 array passes as it is (kind 32): the kernel
    holds it, no copy."""
    rows, cols = w.shape
    if isinstance(w, np.ndarray):
        return (32, rows, cols, w, None, None)
    parts = [w.scales] if w.offsets is None else [w.scales, w.offsets]
    wide = np.float16 if all(p.dtype == np.float16 for p in parts) else np.float32
    scales = np.ascontiguousarray(w.scales, wide)
    if w.quant_type == QUANT_INT8_GROUP:
        if wide == np.float32 and (scales == scales[:, :1]).all():
            scales = np.ascontiguousarray(scales[:, 0])
        return (8, rows, cols, np.ascontiguousarray(w.data, np.int8), scales, None)
    offsets = np.ascontiguousarray(w.offsets, wide)
    return (4, rows, cols, np.ascontiguousarray(w.data, np.uint8), scales, offsets)


def _norm(floats: dict, name: str) -> np.ndarray | None:
    w = floats.get(f"{name}.weight")
    return None if w is None else np.ascontiguousarray(w, np.float32)


def _layer(floats: dict, mats: dict, i: int) -> tuple:
    p = f"layers.{i}."
    specs = [matrix_spec(mats.pop(p + m)) for m in LAYER_MATRICES]
    norms = [_norm(floats, p + n) for n in ("attn_norm", "mlp_norm", "attn.q_norm", "attn.k_norm")]
    return (*specs, *norms)


class NativeDecoder:
    """``core._decode``'s model over the matrices of ``mats`` (which leave it: the kernel's
    copies are the ones kept); ``run`` as ``DecoderGraph.run``."""

    def __init__(self, cfg: TransformerConfig, mats: dict, floats: dict, head: str) -> None:
        from .quantized import threads

        cos, sin = rotary_tables(cfg)
        dims = (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim,
                cfg.max_positions)  # fmt: skip
        flags = (cfg.norm_placement == "sandwich_post") | (2 * bool(cfg.qk_norm))
        head_spec = matrix_spec(mats.pop(head))
        # a generator: each layer's stored arrays are freed once the kernel has copied them
        layers = (_layer(floats, mats, i) for i in range(cfg.n_layers))
        self._model = _decode.create(dims, float(cfg.norm_eps), flags, threads(), cos, sin,
                                     _norm(floats, "final_norm"), head_spec, layers)  # fmt: skip
        self.n_layers, self.vocab, self.dim = cfg.n_layers, head_spec[1], cfg.dim
        self._bound = threading.local()  # per thread: (cache key, numpy views of the cache)
        self.views: WeightViews | None = None  # float32_steps: the model's weights it reads

    def run(self, embeds: torch.Tensor, cache: list, past, *, last_only: bool,
            lengths=None) -> torch.Tensor:  # fmt: skip
        """Logits (B, 1 or S, V): see ``DecoderGraph.run``."""
        past = np.ascontiguousarray(np.asarray(past, np.int32).reshape(-1))
        batch, length = embeds.shape[0], embeds.shape[1]
        own = np.full_like(past, length) if lengths is None else np.asarray(lengths, np.int32)
        capacity = cache[0][0].shape[2]
        check_positions(past, own, length, capacity)
        wanted = (own - 1)[:, None] if last_only else np.arange(length)[None].repeat(batch, 0)
        wanted = np.ascontiguousarray(wanted, np.int64)
        logits = np.empty((batch, wanted.shape[1], self.vocab), np.float32)
        x = np.array(embeds.detach().to(torch.float32).numpy(), np.float32, order="C")  # written
        _decode.step(self._model, x, batch, length, past, self._views(cache), capacity, wanted,
                     wanted.shape[1], logits)  # fmt: skip
        return torch.from_numpy(logits)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the head, dequantized (``GroupQuantized.dequantize``'s values): a
        tied token table's lookups from the decoder's copy, so the table is held once."""
        flat = np.ascontiguousarray(ids.reshape(-1).cpu().numpy(), np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.vocab):
            raise InputError(
                f"token ids must be in 0 .. {self.vocab - 1}, got {int(flat.min())} .. "
                f"{int(flat.max())}; encode text with the model's own tokenizer"
            )
        out = np.empty((flat.size, self.dim), np.float32)
        _decode.lookup(self._model, flat, out)
        return torch.from_numpy(out).view(*ids.shape, self.dim)

    def _views(self, cache: list) -> list:
        """numpy views of the cache's tensors (keys, values a layer), made again only when its
        buffers change."""
        key = tuple((t.data_ptr(), tuple(t.shape)) for pair in cache for t in pair)
        held = getattr(self._bound, "held", None)
        if held is None or held[0] != key:
            views = []
            for pair in cache:
                for t in pair:
                    check_cache_tensor(t)
                    views.append(t.numpy())
            held = self._bound.held = (key, views)
        return held[1]


class NativeEmbedding(torch.nn.Module):
    """A tied token table whose one copy is the native decoder's head (``NativeDecoder.lookup``)."""

    def __init__(self, decoder: NativeDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.lookup(ids)


def float32_steps(model: torch.nn.Module) -> NativeDecoder | None:
    """A float32 causal LM's decode steps in our C kernel, over views of the model's own plain
    weights (no copy; gate and up are joined into ``mlp.gate_up`` for it, q / k / v already are
    by ``Attention.compute_converted``); None (the reason logged) where the kernel does not run
    it. The matrices stream at the memory's rate a step, the rest of a step is C instead of ~20
    torch ops a layer (decision 0018); every sum is float32 (~1e-6 from torch's, as oneDNN's).
    The model's own ``logits`` stay torch's: masks, gradients and other devices work as before."""
    from .compute_layers import stacked_linear

    cfg = model.config.body
    why = _config_why_not(cfg)
    if why is not None:  # before joining gate and up: torch keeps its fused SiLU then
        log.info("float32 decode steps stay on torch, not our C kernel: %s", why)
        return None
    for layer in model.layers:
        mlp = layer.mlp
        if mlp.gate_up is None and mlp.swiglu:
            fused = stacked_linear([mlp.gate, mlp.up])
            if fused is not None:
                mlp.gate_up, mlp.gate, mlp.up = fused, None, None
    viewed = {name: m.weight for name, m in model.named_modules() if type(m) is nn.Linear}
    viewed["token_embed"] = model.token_embed.weight
    head = "lm_head" if "lm_head" in viewed else "token_embed"
    if any(w.dtype != torch.float32 or w.device.type != "cpu" for w in viewed.values()):
        return None
    mats = {name: w.detach().numpy() for name, w in viewed.items()}
    why = why_not(cfg, mats, head) or _dense(viewed)
    if why is not None:
        log.info("float32 decode steps stay on torch, not our C kernel: %s", why)
        return None
    floats = {n: p.detach().numpy() for n, p in model.named_parameters() if p.dim() == 1}
    decoder = NativeDecoder(cfg, mats, floats, head)
    decoder.views = WeightViews(model, viewed)
    return decoder


def _dense(viewed: dict) -> str | None:
    """Why the viewed weights cannot be read as plain rows (None: they can; biases are refused
    by ``why_not``'s config check)."""
    odd = [n for n, w in viewed.items() if not w.is_contiguous()]
    return f"{odd[0]} is not contiguous" if odd else None


class WeightViews:
    """The layers of ``model`` named ``names`` whose weights a kernel model reads in place, and
    whether it still reads the model's: a replaced layer or parameter, or one moved, leaves it
    reading the old one (the caller's torch path runs then). ``valid`` runs before every step of
    Whisper's decoder: it reads the modules' own dicts (~23 us for 37 layers) rather than
    resolving dotted names (~320 us)."""

    def __init__(self, model: nn.Module, names) -> None:
        self._held = []
        for name in names:
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            layer = owner._modules[attr]
            self._held.append((owner, attr, layer, layer.weight.data_ptr()))

    def valid(self) -> bool:
        for owner, attr, layer, ptr in self._held:
            w = layer._parameters.get("weight") if owner._modules.get(attr) is layer else None
            if w is None or w.device.type != "cpu" or w.data_ptr() != ptr:
                return False
        return True
