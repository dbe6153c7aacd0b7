"""llm_compression: a compressed Parquet model weight store and CPU inference engine.

The public names below are imported lazily, so ``import llm_compression`` is cheap and
``llm_compression.tables`` works without torch.

Example
-------
>>> import llm_compression as lc
>>> p = lc.MultimodalEmbeddingProvider(text_model="all-minilm-l6-v2.parquet")  # doctest: +SKIP
>>> p.encode(["a cat on a mat"]).shape                                          # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import LLMCompressionError

__version__ = "0.1.0"

_LAZY = {
    "convert": "llm_compression.convert",
    "export": "llm_compression.convert",
    "write_model": "llm_compression.weightfile",
    "read_metadata": "llm_compression.weightfile",
    "WeightLoader": "llm_compression.loader",
    "load_model": "llm_compression.loader",
    "CLIPEngine": "llm_compression.provider",
    "MultimodalEmbeddingProvider": "llm_compression.provider",
    "EmbeddingProvider": "llm_compression.provider",
    "MultimodalStorage": "llm_compression.tables",
    "preset": "llm_compression.families",
}

__all__ = ["LLMCompressionError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_compression' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
