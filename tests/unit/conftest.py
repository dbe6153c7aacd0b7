"""Fixtures shared by the provider tests: tiny random CLIP, BERT and Whisper files, one provider."""

from __future__ import annotations

import pytest
from provider_helpers import tiny_model_file

from llm_compression.provider import MultimodalEmbeddingProvider


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``{"clip": path, "bert": path, "whisper": path}``, converted once per test session."""
    root = tmp_path_factory.getbasetemp() / "provider_models"
    return {kind: tiny_model_file(kind, root) for kind in ("clip", "bert", "whisper")}


@pytest.fixture(scope="module")
def provider(files):
    """A provider with all three models (each loaded on first use)."""
    return MultimodalEmbeddingProvider(
        text_model=files["bert"], clip_model=files["clip"], audio_model=files["whisper"]
    )
