"""The models behind the routes, each loaded once, with its batcher or its single worker thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .batching import Batcher
from .config import ServeConfig
from .errors import APIError
from .metrics import Metrics


def model_id(path: Path | None) -> str | None:
    return None if path is None else Path(path).stem


class Engines:
    """Provider, store, LLM and Whisper for one app; every model call runs off the event loop."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics) -> None:
        self.cfg, self.metrics = cfg, metrics
        self.store = self._open_store(cfg)
        self.provider = self._provider(cfg)
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        kw = dict(max_batch=cfg.max_batch, max_wait=cfg.max_wait, max_queue=cfg.max_queue,
                  metrics=metrics)  # fmt: skip
        self.batchers = {
            "text": Batcher("text", self._encode_text, **kw),
            "clip_text": Batcher("clip_text", self._encode_clip_text, **kw),
            "image": Batcher("image", self._encode_image, **kw),
            "audio": Batcher("audio", self._encode_audio, **kw),
        }
        self.llm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        self.asr_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self.inflight = {"llm": 0, "audio": 0}  # chat / transcription requests in flight

    @staticmethod
    def _open_store(cfg: ServeConfig):
        if cfg.store is None:
            return None
        from ..tables import MultimodalStorage

        return MultimodalStorage(cfg.store, create=False, text_model=cfg.text_model,
                                 clip_model=cfg.clip_model, audio_model=cfg.audio_model,
                                 dtype=cfg.dtype, backend=cfg.backend)  # fmt: skip

    def _provider(self, cfg: ServeConfig):
        if cfg.text_model or cfg.clip_model or cfg.audio_model:
            from ..provider import MultimodalEmbeddingProvider

            return MultimodalEmbeddingProvider(text_model=cfg.text_model,
                                               clip_model=cfg.clip_model,
                                               audio_model=cfg.audio_model, dtype=cfg.dtype,
                                               backend=cfg.backend)  # fmt: skip
        return None if self.store is None else self.store.provider

    # -- models ------------------------------------------------------------------------------

    def models(self) -> dict[str, str]:
        """``{model id: what it does}`` of every model served."""
        roles = {self.cfg.text_model: "embeddings (text)", self.cfg.clip_model:
                 "embeddings (image, text)", self.cfg.audio_model: "embeddings (audio), "
                 "transcriptions", self.cfg.llm: "chat completions"}  # fmt: skip
        return {model_id(p): role for p, role in roles.items() if p is not None}

    def need_provider(self, kind: str) -> Any:
        if self.provider is None:
            raise APIError(404, f"no model embeds {kind} here: start the server with "
                           f"--{_flag(kind)}", kind="not_found", code="model_not_found")  # fmt: skip
        return self.provider

    def loaded_model(self, role: str) -> Any:
        """``load_model`` of the LLM (``"llm"``) or Whisper (``"audio"``) file, once."""
        path = self.cfg.llm if role == "llm" else self.cfg.audio_model
        if path is None:
            raise APIError(404, f"no {role} model here: start the server with --{_flag(role)}",
                           kind="not_found", code="model_not_found")  # fmt: skip
        with self._lock:
            if role not in self._loaded:
                from ..loader import load_model

                self._loaded[role] = load_model(path, **self._compute(role))
            return self._loaded[role]

    def _compute(self, role: str) -> dict[str, str]:
        """``load_model``'s options for the LLM or Whisper (transcribing: torch only)."""
        if role == "llm":
            return {"dtype": self.cfg.llm_dtype, "backend": self.cfg.llm_backend}
        return {"dtype": self.cfg.dtype}

    def token_count(self, texts: list[str], path: Path | None) -> list[int]:
        """Tokens of each text under the tokenizer of the weight file ``path`` (0s without one)."""
        if path is None:
            return [len(t.split()) for t in texts]
        key = str(path)
        with self._lock:
            if key not in self._tokenizers:
                from ..preprocess.text import Tokenizer
                from ..weightfile import read_metadata

                self._tokenizers[key] = Tokenizer.from_files(dict(read_metadata(path).files))
        tok = self._tokenizers[key]
        return [len(tok.encode(t)) if t else 0 for t in texts]

    # -- batch functions (run in each batcher's worker thread) ------------------------------------

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        return self.need_provider("text").encode(texts, batch_size=self.cfg.max_batch,
                                                 show_progress_bar=False)  # fmt: skip

    def _encode_clip_text(self, texts: list[str]) -> np.ndarray:
        return self.need_provider("image").clip_engine.encode_text(
            texts, batch_size=self.cfg.max_batch
        )

    def _encode_image(self, images: list[Any]) -> np.ndarray:
        return self.need_provider("image").encode_image(images, batch_size=self.cfg.max_batch)

    def _encode_audio(self, clips: list[tuple[np.ndarray, int]]) -> np.ndarray:
        provider = self.need_provider("audio")
        out: list[np.ndarray | None] = [None] * len(clips)
        for rate in sorted({r for _, r in clips}):  # encode_audio takes one rate per call
            where = [i for i, (_, r) in enumerate(clips) if r == rate]
            vecs = provider.encode_audio([clips[i][0] for i in where], sample_rate=rate)
            for i, v in zip(where, vecs, strict=True):
                out[i] = v
        return np.stack(out)

    async def embed(self, kind: str, items: list[Any]) -> list[np.ndarray]:
        """Vectors of ``items`` via the batcher of ``kind``, within the request timeout."""
        return await self.batchers[kind].submit(items)

    async def run(self, pool: ThreadPoolExecutor, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    def queue_depths(self) -> dict[str, int]:
        return {name: b.depth for name, b in self.batchers.items()}

    async def close(self) -> None:
        for b in self.batchers.values():
            await b.close()
        self.llm_pool.shutdown(wait=False, cancel_futures=True)
        self.asr_pool.shutdown(wait=False, cancel_futures=True)


def _flag(kind: str) -> str:
    flags = {"text": "text-model", "image": "clip-model", "audio": "audio-model", "llm": "llm"}
    if kind not in flags:
        raise ConfigError(f"unknown model role {kind!r}")
    return flags[kind]
