"""MultimodalEmbeddingProvider: text, image, audio and video embeddings behind one object.

Models load lazily: constructing the provider reads only the metadata of each file (to check its
family and learn its dimension); each model is built on first use, once, under a lock.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from ..config import config_from_dict
from ..errors import ConfigError, InputError
from ._loading import LazySlot, check_family
from .batching import OnError, embed_in_batches
from .clip_engine import CLIPEngine, to_numpy
from .inputs import as_items, as_texts, check_waveform
from .protocol import EmbeddingResult
from .similarity import l2_normalize
from .video import sample_frames

PathLike = str | os.PathLike


class MultimodalEmbeddingProvider:
    """One API for text, image, audio and video embeddings (an ``EmbeddingProvider`` for text).

    Parameters
    ----------
    text_model : path, optional
        Sentence encoder (MiniLM/BERT file) for ``encode``/``encode_batch``; a CLIP file also works.
        Without it, text goes through the CLIP text tower of ``clip_model``.
    clip_model : path, optional
        CLIP file: images, video frames and cross-modal similarity.
    audio_model : path, optional
        Whisper file: audio (mean of the encoder states over the frames that hold audio).
    max_pixels : int, optional
        Largest image ``width * height`` accepted (see ``CLIPEngine``).

    Every vector returned is float32 and L2-normalised. Text vectors of ``text_model`` (MiniLM)
    and CLIP vectors live in different spaces: compare text with images only through
    ``compute_cross_modal_similarity``, which uses CLIP's two towers.

    Examples
    --------
    >>> p = MultimodalEmbeddingProvider(
    ...     text_model="minilm.parquet", clip_model="clip.parquet")  # doctest: +SKIP
    >>> p.encode("hello").shape, p.encode_image(["a.png", "b.jpg"]).shape  # doctest: +SKIP
    ((384,), (2, 512))
    """

    def __init__(
        self,
        *,
        text_model: PathLike | None = None,
        clip_model: PathLike | None = None,
        audio_model: PathLike | None = None,
        max_pixels: int | None = None,
    ) -> None:
        if text_model is None and clip_model is None and audio_model is None:
            raise ConfigError(
                "MultimodalEmbeddingProvider needs at least one model: pass text_model=, "
                "clip_model= and/or audio_model= (paths of converted .parquet files)"
            )
        self._metas: dict[str, Any] = {}
        self._clip = self._text = self._audio = None
        if clip_model is not None:
            self._metas["clip"] = check_family(clip_model, role="clip_model", expected=("clip",))
            self._clip = LazySlot(partial(CLIPEngine, clip_model, max_pixels=max_pixels))
        if text_model is not None:
            self._metas["text"] = check_family(
                text_model, role="text_model", expected=("bert", "clip")
            )
            if self._metas["text"].family == "clip":
                self._text = LazySlot(partial(CLIPEngine, text_model, max_pixels=max_pixels))
            else:
                self._text = LazySlot(partial(_load_model, text_model))
        elif clip_model is not None:  # text goes through CLIP's text tower
            self._metas["text"], self._text = self._metas["clip"], self._clip
        if audio_model is not None:
            self._metas["audio"] = check_family(
                audio_model, role="audio_model", expected=("whisper",)
            )
            self._audio = LazySlot(partial(_load_model, audio_model))

    # -- text (the EmbeddingProvider protocol) -------------------------------------------------

    @property
    def dimension(self) -> int:
        """Length of the text vectors (384 for MiniLM, 512 for CLIP ViT-B/32)."""
        return _dimension(self._meta("text"))

    @property
    def loaded(self) -> dict[str, bool]:
        """Which models have been built so far (``{"text": False, "clip": True, ...}``)."""
        slots = {"text": self._text, "clip": self._clip, "audio": self._audio}
        return {name: slot.loaded for name, slot in slots.items() if slot is not None}

    @property
    def clip_engine(self) -> CLIPEngine:
        """The ``CLIPEngine`` of ``clip_model`` (loaded on first access): retrieval, zero-shot."""
        return self._slot("clip").get()

    def encode(self, text: str) -> np.ndarray:
        """One text -> float32 ``(dimension,)``."""
        if not isinstance(text, str):
            raise InputError(
                f"encode takes one string, got {type(text).__name__}; use encode_batch"
            )
        return self.encode_batch([text])[0]

    def encode_batch(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress: bool = False
    ) -> np.ndarray:
        """Texts -> float32 ``(N, dimension)``; ``batch_size`` texts per forward pass."""
        items = as_texts(texts)
        model = self._slot("text").get() if items else None
        result = embed_in_batches(
            items, prepare=lambda t: t, embed=lambda chunk: _embed_texts(model, chunk),
            dim=self.dimension, batch_size=batch_size, show_progress=show_progress, desc="text",
        )  # fmt: skip
        return result.vectors

    # -- images and video -----------------------------------------------------------------------

    def encode_image(
        self,
        images: Any,
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        on_error: OnError = "raise",
    ) -> np.ndarray | EmbeddingResult:
        """Images -> float32 ``(N, clip dim)``; inputs and ``on_error`` as ``CLIPEngine.encode_image``."""
        engine = self.clip_engine
        return engine.encode_image(
            images, batch_size=batch_size, show_progress=show_progress, on_error=on_error
        )

    def encode_video(
        self, path: PathLike, *, frames: int = 16, batch_size: int = 16, show_progress: bool = False
    ) -> np.ndarray:
        """One video -> float32 ``(clip dim,)``.

        ``frames`` frames are sampled evenly over the whole stream (the centre of each of
        ``frames`` equal spans; every frame when the video has fewer), embedded with the CLIP
        image tower, averaged, and the mean is L2-normalised. A still image file raises
        ``InputError`` (use ``encode_image``): it is never replicated into frames.
        """
        engine = self.clip_engine
        pictures = sample_frames(path, frames, max_pixels=engine.max_pixels)
        vectors = engine.encode_image(pictures, batch_size=batch_size, show_progress=show_progress)
        return l2_normalize(vectors.mean(axis=0))

    # -- audio ------------------------------------------------------------------------------------

    def encode_audio(
        self,
        audio: Any,
        *,
        sample_rate: int | None = None,
        batch_size: int = 8,
        show_progress: bool = False,
        on_error: OnError = "raise",
    ) -> np.ndarray | EmbeddingResult:
        """Audio -> float32 ``(N, audio dim)`` L2-normalised.

        Parameters
        ----------
        audio : path, numpy array, or a list/tuple of them
            Files (wav, flac, mp3, ogg ...) or arrays ``(samples,)`` / ``(channels, samples)``;
            resampled to 16 kHz and mixed to mono.
        sample_rate : int, optional
            Sample rate of array inputs (required for arrays; ignored for files).
        batch_size, show_progress, on_error
            As in ``encode_image``: clips per forward pass, a tqdm bar, ``"raise"`` or ``"skip"``
            (then an ``EmbeddingResult`` is returned).
        """
        from ..preprocess.audio import load_audio

        model = self._slot("audio").get()

        def prepare(x: Any) -> np.ndarray:
            rate = None if isinstance(x, str | os.PathLike) else sample_rate  # files carry theirs
            return check_waveform(load_audio(x, sample_rate=rate))

        result = embed_in_batches(
            as_items(audio), prepare=prepare, embed=lambda waves: _embed_audio(model, waves),
            dim=_dimension(self._meta("audio")), batch_size=batch_size,
            show_progress=show_progress, on_error=on_error, desc="audio",
        )  # fmt: skip
        return result if on_error == "skip" else result.vectors

    # -- several modalities ---------------------------------------------------------------------

    def encode_multimodal(
        self,
        *,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        video: PathLike | None = None,
        sample_rate: int | None = None,
    ) -> dict[str, np.ndarray]:
        """One vector ``(dim,)`` per modality given: ``{"text": ..., "image": ..., ...}``.

        Each argument is one item (one text, image, clip or video file). Vectors of different
        modalities come from different models and are not comparable, except text/image when
        no ``text_model`` was given (both are CLIP then).
        """
        out: dict[str, np.ndarray] = {}
        if text is not None:
            out["text"] = self.encode(text)
        if image is not None:
            out["image"] = self.encode_image([image])[0]
        if audio is not None:
            out["audio"] = self.encode_audio([audio], sample_rate=sample_rate)[0]
        if video is not None:
            out["video"] = self.encode_video(video)
        if not out:
            raise InputError("encode_multimodal got nothing; pass text=, image=, audio= or video=")
        return out

    def compute_cross_modal_similarity(
        self, texts: str | Sequence[str], images: Any, *, batch_size: int = 32
    ) -> np.ndarray:
        """``(N texts, M images)`` cosine similarities from CLIP's text and image towers."""
        engine = self.clip_engine
        t = engine.encode_text(texts, batch_size=batch_size)
        i = engine.encode_image(images, batch_size=batch_size)
        return engine.compute_similarity(t, i)

    # -- internals --------------------------------------------------------------------------------

    def _meta(self, name: str) -> Any:
        if name not in self._metas:
            raise ConfigError(_missing(name))
        return self._metas[name]

    def _slot(self, name: str) -> LazySlot:
        slot = {"text": self._text, "clip": self._clip, "audio": self._audio}[name]
        if slot is None:
            raise ConfigError(_missing(name))
        return slot


_ARG = {
    "text": "text_model= (a MiniLM file) or clip_model=",
    "clip": "clip_model= (a CLIP file)",
    "audio": "audio_model= (a Whisper file)",
}


def _missing(name: str) -> str:
    return f"this provider has no {name} model; create it with {_ARG[name]}"


def _load_model(path: PathLike) -> Any:
    from ..models import load_model

    return load_model(path)


def _dimension(meta: Any) -> int:
    cfg = config_from_dict(meta.config) if isinstance(meta.config, dict) else meta.config
    if cfg.family == "clip":
        return int(cfg.projection_dim)
    return int(cfg.encoder.dim)  # BERT pooled states and Whisper's mean encoder state


def _embed_texts(model: Any, texts: list[str]) -> np.ndarray:
    if isinstance(model, CLIPEngine):
        return model.encode_text(texts, batch_size=len(texts))
    with torch.inference_mode():
        out = model.embed_texts(texts, batch_size=len(texts))
    return l2_normalize(to_numpy(out))


def _embed_audio(model: Any, waves: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        out = model.embed_audio(waves, batch_size=len(waves), sample_rate=16000)
    return l2_normalize(to_numpy(out))
