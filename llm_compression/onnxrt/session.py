"""``OrtModel``: a weight file's encoders on ONNX Runtime, weights fed from the file's rows.

numpy, onnxruntime, tokenizers and the weight-file reader: no torch, no transformers (once the
graphs exist, ``graphs.py``). Each modality is one ``InferenceSession`` over a graph whose
weights are placeholders; the decoded rows are handed to it with
``SessionOptions.add_external_initializers`` (ORT copies them: ours are dropped once the session
exists), int8 ones as the int8 matrix transposed to (in, out) with its scales (an int8 file's own
rows; a float file's quantized per output channel as our int8 files are). The tables a ``Gather``
reads (embeddings) are graph inputs instead, fed at each run from the one decoded copy.

It offers what the provider reads off a torch model (``encode_text(ids, mask)``,
``encode_image(pixels)``, ``encode_audio(mel, frames)``, ``embedding_dim``, ``text_context``,
``normalizes``, ``tokenizer``, ``config``), taking and returning numpy arrays.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..weightfile import WeightFile, decode_tensor
from ..weightfile.format import quantize_int8_rows
from .graphs import INFO, INT8_ROWS, INT8_SCALE, INT8_WEIGHT, find_graphs, graph_name

log = logging.getLogger(__name__)

DTYPES = ("float32", "int8")


def parse_ort_dtype(dtype: Any) -> str:
    """``"float32"`` or ``"int8"`` (what ONNX Runtime computes here), else ConfigError."""
    name = str(dtype).lower().removeprefix("torch.")
    name = {"fp32": "float32", "float": "float32", "qint8": "int8"}.get(name, name)
    if name not in DTYPES:
        raise ConfigError(
            f"dtype={dtype!r} is not available with backend='onnxruntime'; choose one of "
            f"{list(DTYPES)}, or backend='torch' for bfloat16"
        )
    return name


def default_threads() -> int:
    """The cores this process may run on (what ``torch.get_num_threads`` defaults to)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Rows:
    """Decodes the weights one graph names, each row once, in parallel (zstd releases the GIL)."""

    def __init__(self, file: WeightFile, threads: int) -> None:
        self.file, self.threads = file, threads

    def _int8(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        info = self.file.tensors[name]
        if info.quant_type is not None:  # an int8 file: its own rows, decoded once
            return self.file.read_int8(info)
        streamed = self.file.read_quantized(info, quantize_int8_rows)  # no float32 matrix held
        return streamed or quantize_int8_rows(decode_tensor(self.file, info))

    def _size(self, name: str) -> int:
        """Stored bytes of the row behind a placeholder (as ``WeightLoader.load_weights`` orders)."""
        for suffix in (INT8_WEIGHT, INT8_ROWS):
            name = name.removesuffix(suffix)
        return self.file.tensors[name].stored_bytes

    def _one(self, name: str) -> list[tuple[str, np.ndarray]]:
        if name.endswith(INT8_WEIGHT):
            base = name.removesuffix(INT8_WEIGHT)
            q, scales = self._int8(base)
            return [(name, np.ascontiguousarray(q.T)), (base + INT8_SCALE, scales)]
        if name.endswith(INT8_ROWS):  # a Gather's table: rows as stored
            base = name.removesuffix(INT8_ROWS)
            return list(zip((name, base + INT8_SCALE), self._int8(base), strict=True))
        return [(name, decode_tensor(self.file, name))]

    def decode(self, names: list[str]) -> dict[str, np.ndarray]:
        wanted = [n for n in names if not n.endswith(INT8_SCALE)]  # come with their weight
        wanted.sort(key=self._size, reverse=True)  # the largest first: no thread waits on one
        with ThreadPoolExecutor(max(1, min(self.threads, len(wanted)))) as pool:
            return {k: v for pairs in pool.map(self._one, wanted) for k, v in pairs}


class OrtModel:
    """The encoders of one weight file on ONNX Runtime (``load_model(..., backend="onnxruntime")``).

    Parameters
    ----------
    path : a weight file of an embedding family (bert, clip, whisper, mobilenet_v2), or the
        ``WeightFile`` opened on it.
    dtype : "float32" (default; the core's parity thresholds hold) or "int8" (linear layers in
        dynamic int8, ``DynamicQuantizeMatMul``).
    threads : ONNX Runtime's intra-op threads (default: the cores this process may use).
    """

    backend = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike | WeightFile, *, dtype: Any = "float32",
        threads: int | None = None,
    ) -> None:  # fmt: skip
        import onnxruntime as ort

        start = time.perf_counter()
        self.compute_dtype = parse_ort_dtype(dtype)
        self.file = path if isinstance(path, WeightFile) else WeightFile(path)
        self.path = self.file.path
        meta = self.file.metadata
        graphs = find_graphs(meta)
        self.info: dict[str, Any] = json.loads(graphs[INFO])
        self.threads = int(threads or default_threads())
        rows = _Rows(self.file, self.threads)
        self._sessions: dict[str, Any] = {}
        self._fed: dict[str, dict[str, np.ndarray]] = {}  # tables the runs read where they lie
        for modality, part in self.info["parts"].items():
            fed = part["fed"][self.compute_dtype]
            held = [n for n in part[self.compute_dtype] if n not in fed]
            graph = graphs[graph_name(modality, self.compute_dtype)]
            self._sessions[modality] = _session(ort, graph, rows.decode(held), self.threads)
            # decoded once ORT holds (and we dropped) the rest: the peak holds one copy of each
            self._fed[modality] = rows.decode(fed)
        self.tokenizer = None
        if "text" in self.info["parts"]:
            from ..preprocess.text import Tokenizer

            self.tokenizer = Tokenizer.from_files(dict(meta.files))
            self.tokenizer.truncate_by_default(self.info["text_context"])
        self._config = None
        log.info("loaded %s on onnxruntime (%s) in %.3f s", path, self.compute_dtype,
                 time.perf_counter() - start)  # fmt: skip

    # -- what the provider reads --------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The family config (rebuilt on first use: the families import torch)."""
        if self._config is None:
            from ..families import config_from_dict

            self._config = config_from_dict(self.info["config"])
        return self._config

    @property
    def family(self) -> str:
        return self.info["family"]

    def __getattr__(self, name: str) -> Any:
        facts = self.__dict__.get("info", {})
        if name in ("embedding_dim", "text_context", "normalizes", "empty_text_ok",
                    "samples_per_frame") and name in facts:  # fmt: skip
            return facts[name]
        raise AttributeError(f"{type(self).__name__} of {facts.get('family')!r} has no {name!r}")

    @property
    def logit_scale(self) -> float:
        """CLIP's stored logit scale (before ``exp``)."""
        return float(decode_tensor(self.file, "logit_scale").reshape(()))

    # -- encoders ------------------------------------------------------------------------------

    def _run(self, modality: str, feeds: dict[str, Any]) -> np.ndarray:
        session = self._sessions.get(modality)
        if session is None:
            raise InputError(
                f"{self.path} ({self.family}) does not embed {modality}; it embeds "
                f"{list(self._sessions)}"
            )
        wanted = {i.name for i in session.get_inputs()}  # CLIP's text graph takes no mask
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        return session.run(None, {**self._fed[modality], **feeds})[0]

    def encode_text(self, ids: Any, mask: Any = None) -> np.ndarray:
        """Pooled (B, D) features, unnormalised, of token ids (B, T) and a mask (B, T)."""
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 2:
            raise InputError(f"ids must be (B, T), got shape {ids.shape}")
        if ids.shape[1] > self.text_context and self.family == "clip":
            raise InputError(f"{ids.shape[1]} tokens exceed CLIP's context of {self.text_context}")
        mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)
        return self._run("text", {"ids": ids, "mask": mask})

    def encode_image(self, pixels: Any) -> np.ndarray:
        """Features (B, D) of preprocessed pixels (B, 3, S, S)."""
        pixels = np.ascontiguousarray(pixels, np.float32)
        size = self.info["config"]["image_size"]
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise InputError(f"pixels must have shape (B, 3, {size}, {size}), got {pixels.shape}")
        return self._run("image", {"pixels": pixels})

    def encode_audio(self, mel: Any, frames: Any) -> np.ndarray:
        """Mean encoder state (B, D) over the first ``frames[b]`` frames of log-mel windows."""
        mel = np.ascontiguousarray(mel, np.float32)
        frames = np.asarray(frames, np.int64).reshape(-1)
        if frames.shape[0] != mel.shape[0] or (frames < 1).any():
            raise InputError(
                f"frames must hold one count >= 1 per window ({mel.shape[0]}), got "
                f"{frames.tolist()}"
            )
        return self._run("audio", {"mel": mel, "frames": frames})


def _session(ort: Any, graph: bytes, weights: dict[str, np.ndarray], threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's idle threads otherwise spin after each run, taking the cores from the tokenizer, the
    # caller and whatever else runs (HF's side of an interleaved benchmark measured 1.7x slower)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    names = list(weights)
    values = [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names]
    options.add_external_initializers(names, values)
    # ORT copies these into its own memory as the session starts (and prepacks the linear
    # weights from its copy); ours are dropped on return (tests/unit/test_onnxrt.py checks it)
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
