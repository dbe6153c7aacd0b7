"""Turning a search query (vectors, or text / an image / audio with a provider) into unit vectors.

A provider is any object with ``encode(text)``, ``encode_image(image)``, ``encode_audio(audio)`` (and
``encode_video(path)``) returning numpy vectors (``llm_compression.provider.MultimodalEmbeddingProvider``
is one). Dispatch: numeric arrays are vectors; ``str`` is text unless it names an existing image, audio
or video file; ``os.PathLike`` is such a file by suffix; an object with ``getpixel`` (PIL) is an image.
Text searched against a ``clip`` / ``image`` / ``video`` table is embedded with CLIP's text tower
(``provider.encode_text`` or ``provider.clip_engine.encode_text``) when the provider has one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidEmbeddingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
# the table searched when no modality is given, per query kind, in order of preference
DEFAULT_TABLES = {
    "text": ("text", "clip"),
    "image": ("image", "clip"),
    "audio": ("audio",),
    "video": ("video", "clip"),
}
ENCODERS = {
    "text": "encode",
    "image": "encode_image",
    "audio": "encode_audio",
    "video": "encode_video",
}
CLIP_SPACES = ("clip", "image", "video")  # tables whose text queries go through CLIP's text tower


def query_kind(query: Any) -> str:
    """'vector', 'text', 'image' or 'audio'."""
    if isinstance(query, np.ndarray) or (
        isinstance(query, list | tuple) and query and not isinstance(query[0], str | os.PathLike)
    ):
        return "vector"
    items = query if isinstance(query, list | tuple) else [query]
    kinds = {_item_kind(q) for q in items}
    if len(kinds) != 1:
        raise InvalidEmbeddingError(
            f"a batch of queries must be of one kind, got {sorted(kinds)}; search them separately"
        )
    return kinds.pop()


def _item_kind(query: Any) -> str:
    if hasattr(query, "getpixel"):
        return "image"
    if isinstance(query, str | os.PathLike):
        suffix = Path(query).suffix.lower()
        is_file = not isinstance(query, str) or (len(query) < 4096 and os.path.isfile(query))
        if is_file and suffix in IMAGE_SUFFIXES:
            return "image"
        if is_file and suffix in AUDIO_SUFFIXES:
            return "audio"
        if is_file and suffix in VIDEO_SUFFIXES:
            return "video"
        if isinstance(query, str):
            return "text"
    raise InvalidEmbeddingError(
        f"cannot search with a {type(query).__name__}: expected a vector (numpy array), text, "
        f"an image (PIL or a file with suffix {IMAGE_SUFFIXES}), an audio file ({AUDIO_SUFFIXES}) "
        f"or a video file ({VIDEO_SUFFIXES})"
    )


def encode(provider: Any, kind: str, query: Any, table: str) -> np.ndarray:
    """(Q, dim) float32 vectors of a text / image / audio / video query (one item or a list)."""
    if provider is None:
        raise InvalidEmbeddingError(
            f"a {kind} query needs an embedding provider: open the store with "
            "MultimodalStorage(path, provider=...) or pass a vector"
        )
    method = ENCODERS[kind]
    fn = getattr(provider, method, None)
    if kind == "text" and table in CLIP_SPACES:
        fn = _clip_text_encoder(provider) or fn
    if fn is None:
        raise InvalidEmbeddingError(
            f"the provider {type(provider).__name__} has no {method}(); it cannot embed {kind} "
            "queries: pass a vector or a provider that has it"
        )
    items = list(query) if isinstance(query, list | tuple) else [query]
    return np.stack([np.asarray(fn(item), dtype=np.float32).reshape(-1) for item in items])


def _clip_text_encoder(provider: Any):
    """CLIP's text tower: ``provider.encode_text`` or ``provider.clip_engine.encode_text``."""
    if hasattr(provider, "encode_text"):
        return provider.encode_text
    return getattr(getattr(provider, "clip_engine", None), "encode_text", None)


def as_query_matrix(query: Any, dim: int) -> np.ndarray:
    """(Q, dim) float32 unit rows from a vector or batch of vectors, checked."""
    arr = np.asarray(query)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2):
        raise InvalidEmbeddingError(
            f"a query vector must be a 1-D or 2-D numeric array, got dtype {arr.dtype} "
            f"with shape {arr.shape}"
        )
    arr = np.array(arr, dtype=np.float32, ndmin=2)
    if arr.shape[1] != dim or arr.shape[0] == 0:
        raise InvalidEmbeddingError(
            f"query vectors have shape {arr.shape}, expected (Q, {dim}) for this table; "
            "embed the query with the model that made the table"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))
    if not np.isfinite(norms).all() or (norms == 0).any():
        raise InvalidEmbeddingError("query vectors must be finite and non-zero")
    return arr / norms[:, None]
