"""MultimodalEmbeddingProvider: text, image, audio and video embeddings behind one object.

Models load lazily: constructing the provider reads only the metadata of each file (to check its
family and learn its dimension); each model is built on first use, once, under a lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from ..core.compute import parse_dtype
from ..errors import ConfigError, InputError
from ..families import REGISTRY, config_from_dict, family
from ..onnxrt import parse_backend, parse_ort_dtype
from ._loading import LazySlot, check_family
from .batching import OnError, embed_in_batches
from .clip_engine import CLIPEngine
from .inputs import as_items, as_texts, max_pixels_or_default
from .modalities import embed_audio, embed_images, embed_texts
from .protocol import EmbeddingResult
from .similarity import l2_normalize
from .video import sample_frames

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)


class MultimodalEmbeddingProvider:
    """One API for text, image, audio and video embeddings (an ``EmbeddingProvider`` for text).

    Parameters
    ----------
    text_model : path, optional
        Sentence encoder (MiniLM/BERT file) for ``encode``/``encode_batch``; a CLIP file also works.
        Without it, text goes through the CLIP text tower of ``clip_model``.
    clip_model : path, optional
        CLIP file: images, video frames and cross-modal similarity.
    image_model : path, optional
        A file of any family that embeds images (MobileNetV2: 1,280-d ImageNet features; or
        CLIP): ``encode_image`` and ``encode_video`` use it instead of ``clip_model``, whose
        towers still serve cross-modal similarity.
    audio_model : path, optional
        Whisper file: audio (mean of the encoder states over the frames that hold audio).
    max_pixels : int, optional
        Largest image ``width * height`` accepted (see ``CLIPEngine``).
    dtype : str or torch.dtype, optional
        Compute mode of every model loaded: "float32" (default, exact), "bfloat16" or "int8"
        (``core.compute``: linear layers in bfloat16 / dynamic int8; faster, approximate).
    backend : str, optional
        "torch" (default, our modules) or "onnxruntime" (the encoders on ONNX Runtime, weights
        fed from the files' rows; "float32" or "int8"; ``onnxrt``, decision 0010).

    Every vector returned is float32 and L2-normalised (once, in ``batching.embed_in_batches``;
    ``encode(..., normalize_embeddings=False)`` keeps the file's own output). Preprocessing,
    batching and normalisation run on ``modalities``, the path ``CLIPEngine`` uses too; which
    file embeds what comes from the family registry. Text vectors of ``text_model`` (MiniLM)
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
        image_model: PathLike | None = None,
        max_pixels: int | None = None,
        dtype: str | torch.dtype = "float32",
        backend: str = "torch",
    ) -> None:
        if all(m is None for m in (text_model, clip_model, audio_model, image_model)):
            raise ConfigError(
                "MultimodalEmbeddingProvider needs at least one model: pass text_model=, "
                "clip_model=, image_model= and/or audio_model= (paths of converted .parquet files)"
            )
        self._metas: dict[str, Any] = {}
        self._clip = self._text = self._audio = self._image = None
        self._max_pixels = max_pixels_or_default(max_pixels)
        self.backend = parse_backend(backend)  # both checked now, not at the first lazy load
        self.dtype = parse_ort_dtype(dtype) if self.backend == "onnxruntime" else parse_dtype(dtype)
        load = partial(_load_model, dtype=self.dtype, backend=self.backend)
        if image_model is not None:
            self._metas["image"] = check_family(
                image_model, role="image_model", expected=_can("image")
            )
            self._image = LazySlot(partial(load, image_model))
        if clip_model is not None:
            self._metas["clip"] = check_family(
                clip_model, role="clip_model", expected=_can("image", "text")
            )
            self._clip = LazySlot(
                partial(
                    CLIPEngine,
                    clip_model,
                    max_pixels=max_pixels,
                    dtype=self.dtype,
                    backend=self.backend,
                )  # fmt: skip
            )
        if text_model is not None:
            self._metas["text"] = check_family(text_model, role="text_model", expected=_can("text"))
            self._text = LazySlot(partial(load, text_model))
        elif clip_model is not None:  # text goes through CLIP's text tower
            self._metas["text"], self._text = self._metas["clip"], self._clip
        if audio_model is not None:
            self._metas["audio"] = check_family(
                audio_model, role="audio_model", expected=_can("audio")
            )
            self._audio = LazySlot(partial(load, audio_model))

    # -- text (the EmbeddingProvider protocol) -------------------------------------------------

    @property
    def dimension(self) -> int:
        """Length of the text vectors (384 for MiniLM, 512 for CLIP ViT-B/32)."""
        return _dimension(self._meta("text"))

    @property
    def loaded(self) -> dict[str, bool]:
        """Which models have been built so far (``{"text": False, "clip": True, ...}``)."""
        slots = {"text": self._text, "clip": self._clip, "audio": self._audio, "image": self._image}
        return {name: slot.loaded for name, slot in slots.items() if slot is not None}

    @property
    def image_dimension(self) -> int:
        """Length of the image vectors (``image_model``'s, else CLIP's)."""
        return _dimension(self._meta("image" if self._image is not None else "clip"))

    @property
    def clip_engine(self) -> CLIPEngine:
        """The ``CLIPEngine`` of ``clip_model`` (loaded on first access): retrieval, zero-shot."""
        return self._slot("clip").get()

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Text(s) -> vectors, with sentence-transformers' ``encode`` signature.

        One string gives ``(dimension,)``, a list ``(N, dimension)``: a float32 numpy array, a
        torch tensor with ``convert_to_tensor=True``, a list of 1-D tensors with
        ``convert_to_numpy=False``. ``show_progress_bar=None`` shows a bar when this module's
        logger is at INFO or below. ``normalize_embeddings=False`` returns the model's features
        as the file defines them (a MiniLM file ends in its own normalisation, as in
        sentence-transformers).
        """
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        vectors = self._encode_texts(
            as_texts(sentences), batch_size, bool(show_progress_bar), bool(normalize_embeddings)
        )
        out: Any = vectors
        if convert_to_tensor:
            out = torch.from_numpy(vectors)
        elif not convert_to_numpy:
            out = list(torch.from_numpy(vectors))
        return out[0] if isinstance(sentences, str) else out

    def encode_batch(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress: bool = False
    ) -> np.ndarray:
        """Texts -> float32 ``(N, dimension)``, L2-normalised; ``batch_size`` texts per forward pass.

        The batches are cut from all ``texts`` sorted by token count; rows keep input order.
        """
        return self._encode_texts(as_texts(texts), batch_size, show_progress, True)

    def _encode_texts(
        self, texts: list[str], batch_size: int, show_progress: bool, normalize: bool
    ) -> np.ndarray:
        if not texts:  # no model is loaded for nothing; the options are still checked
            empty = embed_in_batches([], prepare=None, embed=None, dim=self.dimension,
                                     batch_size=batch_size)  # fmt: skip
            return empty.vectors
        slot = self._slot("text")
        model = self.clip_engine.model if slot is self._clip else slot.get()
        return embed_texts(
            model, texts, batch_size=batch_size, show_progress=show_progress, normalize=normalize
        )

    # -- images and video -----------------------------------------------------------------------

    def encode_image(
        self,
        images: Any,
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        on_error: OnError = "raise",
    ) -> np.ndarray | EmbeddingResult:
        """Images -> float32 ``(N, image_dimension)``; inputs and ``on_error`` as
        ``CLIPEngine.encode_image``. ``image_model`` embeds them when given, else ``clip_model``."""
        if self._image is None:
            return self.clip_engine.encode_image(
                images, batch_size=batch_size, show_progress=show_progress, on_error=on_error
            )
        result = embed_images(
            self._image.get(), as_items(images), max_pixels=self._max_pixels,
            batch_size=batch_size, show_progress=show_progress, on_error=on_error,
        )  # fmt: skip
        return result if on_error == "skip" else result.vectors

    def encode_video(
        self, path: PathLike, *, frames: int = 16, batch_size: int = 16, show_progress: bool = False
    ) -> np.ndarray:
        """One video -> float32 ``(image_dimension,)``.

        ``frames`` frames are sampled evenly over the whole stream (the centre of each of
        ``frames`` equal spans; every frame when the video has fewer), embedded as images
        (``encode_image``), averaged, and the mean is L2-normalised. A still image file raises
        ``InputError`` (use ``encode_image``): it is never replicated into frames.
        """
        pictures = sample_frames(path, frames, max_pixels=self._max_pixels)
        vectors = self.encode_image(pictures, batch_size=batch_size, show_progress=show_progress)
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
        result = embed_audio(
            self._slot("audio").get(), as_items(audio), sample_rate=sample_rate,
            batch_size=batch_size, show_progress=show_progress, on_error=on_error,
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
        slot = {"text": self._text, "clip": self._clip, "audio": self._audio, "image": self._image}[
            name
        ]
        if slot is None:
            raise ConfigError(_missing(name))
        return slot


_ARG = {
    "text": "text_model= (a MiniLM file) or clip_model=",
    "clip": "clip_model= (a CLIP file)",
    "audio": "audio_model= (a Whisper file)",
    "image": "image_model= (a MobileNetV2 or CLIP file) or clip_model=",
}


def _missing(name: str) -> str:
    return f"this provider has no {name} model; create it with {_ARG[name]}"


def _load_model(path: PathLike, *, dtype: str, backend: str) -> Any:
    from ..loader import load_model

    return load_model(path, dtype=dtype, backend=backend)


def _dimension(meta: Any) -> int:
    """Length of the vectors the file's model embeds (its family says how to read it)."""
    cfg = config_from_dict(meta.config)
    return int(family(cfg.family).embedding_dim(cfg))


def _can(*modalities: str) -> tuple[str, ...]:
    """The registered families whose files embed all of ``modalities``."""
    return tuple(f.name for f in REGISTRY.values() if set(modalities) <= set(f.modalities))
