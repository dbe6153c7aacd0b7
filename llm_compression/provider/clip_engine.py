"""CLIPEngine: CLIP's image and text towers from one Parquet weight file, in one embedding space.

It runs on the provider's one embedding path (``modalities.embed_texts`` / ``embed_images``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .batching import OnError
from .inputs import as_items, as_texts
from .modalities import embed_images, embed_texts
from .protocol import EmbeddingResult
from .similarity import cosine_matrix, softmax, top_k

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) to 100


class CLIPEngine:
    """Text and image embeddings, similarities, retrieval and zero-shot classification with CLIP.

    Parameters
    ----------
    path : str or os.PathLike
        A CLIP weight file (family ``"clip"``) written by ``llm-compression convert``.
    max_pixels : int, optional
        Largest ``width * height`` of an input image; larger ones raise ``InputError`` before any
        pixel is decoded. Default: ``preprocess.image.DEFAULT_MAX_PIXELS`` (~89.5 MP).
    dtype : str or torch.dtype, optional
        Compute mode: "float32" (default, exact), "bfloat16" or "int8" (``core.compute``).
    backend : str, optional
        "torch" (default) or "onnxruntime" (both towers on ONNX Runtime, "float32" or "int8";
        decision 0010).

    Raises
    ------
    ModelFileNotFoundError
        ``path`` does not exist.
    WrongFamilyError
        ``path`` holds another model family (the message says which file is expected).

    Examples
    --------
    >>> clip = CLIPEngine("clip-vit-b-32.parquet")  # doctest: +SKIP
    >>> clip.zero_shot_classification("cat.png", ["cat", "dog"])  # doctest: +SKIP
    {'cat': 0.93, 'dog': 0.07}
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_pixels: int | None = None,
        dtype: str | torch.dtype = "float32",
        backend: str = "torch",
    ) -> None:
        from ..loader import load_model
        from ._loading import check_family
        from .inputs import max_pixels_or_default

        check_family(path, role="CLIPEngine", expected=("clip",))
        self.path = os.fspath(path)
        self.max_pixels = max_pixels_or_default(max_pixels)
        self.model = load_model(path, dtype=dtype, backend=backend)
        self.config = self.model.config

    @property
    def embedding_dim(self) -> int:
        """Length of the shared image/text embedding (512 for ViT-B/32)."""
        return int(self.config.projection_dim)

    @property
    def logit_scale(self) -> float:
        """The multiplier CLIP applies to cosine similarities: ``min(exp(logit_scale), 100)``."""
        raw = self.model.logit_scale
        value = float(raw.detach()) if isinstance(raw, torch.Tensor) else float(raw)
        return min(math.exp(value), MAX_LOGIT_SCALE)

    # -- embeddings ---------------------------------------------------------------------------

    def encode_text(
        self, texts: str | Sequence[str], *, batch_size: int = 32, show_progress: bool = False
    ) -> np.ndarray:
        """Texts -> float32 ``(N, embedding_dim)`` L2-normalised (one string gives ``N = 1``).

        Texts longer than the 77-token context are truncated, keeping the end-of-text token.
        """
        return embed_texts(
            self.model, as_texts(texts), batch_size=batch_size, show_progress=show_progress,
            desc="CLIP text",
        )  # fmt: skip

    def encode_image(
        self,
        images: Any,
        *,
        batch_size: int = 32,
        show_progress: bool = False,
        on_error: OnError = "raise",
    ) -> np.ndarray | EmbeddingResult:
        """Images -> float32 ``(N, embedding_dim)`` L2-normalised.

        Parameters
        ----------
        images : path, PIL image, numpy array, or a list/tuple of them
            Arrays are ``(H, W)`` or ``(H, W, C)``, uint8 or float in [0, 1]; a 4-D array is a
            batch. Any size and PIL mode (converted to RGB, transparency onto white).
        batch_size : int
            Images per forward pass.
        show_progress : bool
            Show a tqdm bar on stderr.
        on_error : {"raise", "skip"}
            ``"raise"``: the first bad image raises (its position in the message) and an array is
            returned. ``"skip"``: bad images are left out and an ``EmbeddingResult`` is returned
            (``.vectors``, ``.indices`` of the kept inputs, ``.errors`` as ``(index, reason)``).
        """
        result = embed_images(
            self.model, as_items(images), max_pixels=self.max_pixels, batch_size=batch_size,
            show_progress=show_progress, on_error=on_error, desc="CLIP images",
        )  # fmt: skip
        return result if on_error == "skip" else result.vectors

    # -- similarity and its uses --------------------------------------------------------------

    def compute_similarity(
        self, a: np.ndarray, b: np.ndarray, *, logits: bool = False
    ) -> np.ndarray:
        """``(N, M)`` cosine similarities between embeddings ``a`` (N, D) and ``b`` (M, D).

        With ``logits=True`` the cosines are multiplied by ``logit_scale``, as CLIP does before
        its softmax.
        """
        sims = cosine_matrix(a, b)
        return (sims * self.logit_scale).astype(np.float32) if logits else sims

    def find_best_matches(
        self, query_text: str, images: Any, top_k: int = 5
    ) -> list[tuple[int, float]]:
        """The ``top_k`` images closest to ``query_text``: ``(image index, cosine)``, best first.

        ``top_k`` is clipped to the number of images.
        """
        if not isinstance(query_text, str):
            raise InputError(f"query_text must be a string, got {type(query_text).__name__}")
        _check_top_k(top_k)
        scores = self.compute_similarity(self.encode_text(query_text), self.encode_image(images))
        return _top(scores[0], top_k)

    def find_best_text_matches(
        self, image: Any, texts: Sequence[str], top_k: int = 5
    ) -> list[tuple[int, float]]:
        """The ``top_k`` texts closest to ``image``: ``(text index, cosine)``, best first."""
        items = as_items(image)
        if len(items) != 1:
            raise InputError(f"pass one image, got {len(items)}; call it once per image")
        _check_top_k(top_k)
        scores = self.compute_similarity(self.encode_image(items), self.encode_text(texts))
        return _top(scores[0], top_k)

    def zero_shot_classification(
        self, image: Any, labels: Sequence[str], *, template: str = "a photo of a {}."
    ) -> dict[str, float]:
        """Label -> probability for one image (softmax of ``logit_scale * cosine``, as CLIP does).

        Each label becomes a prompt with ``template.format(label)``; probabilities sum to 1 and
        keep the order of ``labels``.
        """
        labels = as_texts(labels)
        if not labels:
            raise InputError("labels is empty; pass at least one label")
        if len(set(labels)) != len(labels):
            raise InputError(f"labels must be unique, got {labels}")
        if not isinstance(template, str) or "{}" not in template:
            raise InputError(f"template must contain '{{}}' for the label, got {template!r}")
        items = as_items(image)
        if len(items) != 1:
            raise InputError(f"pass one image, got {len(items)}; call it once per image")
        prompts = [template.format(label) for label in labels]
        logits = self.compute_similarity(
            self.encode_image(items), self.encode_text(prompts), logits=True
        )
        probs = softmax(logits[0])
        return {label: float(p) for label, p in zip(labels, probs, strict=True)}


def _check_top_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"top_k must be a positive integer, got {k!r}")


def _top(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    return top_k(scores, int(k)) if scores.size else []
