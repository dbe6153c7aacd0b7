"""Preprocessing without transformers: images (CLIP), audio (Whisper log-mel), text (tokenizers).

Submodules are imported on use, so ``import llm_compression.preprocess`` stays cheap:
``preprocess.image`` (PIL), ``preprocess.audio`` (soundfile, soxr, PyAV), ``preprocess.text``
(tokenizers, jinja2).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_image": "image",
    "clip_pixels": "image",
    "load_audio": "audio",
    "log_mel": "audio",
    "log_mel_batch": "audio",
    "Tokenizer": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
