"""backend="onnxruntime" on real weights: MiniLM against HF transformers, CLIP against our torch path.

float32 holds the core's parity thresholds (MiniLM cosine >= 0.99999 and atol 1e-5 to
BertModel + mean pooling, as tests/integration/test_models_real.py); int8 the issue #11 ones
(MiniLM mean cosine >= 0.99 to float32, CLIP ViT-B/32 relative L2 <= 0.02).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_compute_real import SENTENCES
from test_models_real import hf_minilm_vectors

from llm_compression.convert import convert
from llm_compression.convert.random_init import save_random_clip
from llm_compression.loader import load_model
from llm_compression.provider import MultimodalEmbeddingProvider

pytestmark = pytest.mark.integration
pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _graph_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LLM_COMPRESSION_CACHE", str(tmp_path_factory.getbasetemp() / "graphs"))


def test_minilm_float32_matches_transformers(real_minilm_parquet):
    provider = MultimodalEmbeddingProvider(text_model=real_minilm_parquet, backend="onnxruntime")
    ours = provider.encode_batch(SENTENCES, batch_size=5)
    ref = hf_minilm_vectors(SENTENCES)
    cosine = (ours.astype(np.float64) * ref).sum(axis=1)
    assert cosine.min() >= 0.99999, cosine
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_minilm_int8_keeps_cosine(real_minilm_parquet):
    exact = MultimodalEmbeddingProvider(text_model=real_minilm_parquet).encode_batch(SENTENCES)
    fast = MultimodalEmbeddingProvider(
        text_model=real_minilm_parquet, backend="onnxruntime", dtype="int8"
    )
    cos = (exact * fast.encode_batch(SENTENCES)).sum(axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    folder = save_random_clip(tmp_path_factory.mktemp("clip_hf"))
    return convert(folder, tmp_path_factory.mktemp("clip") / "clip.parquet", dtype="float32")


@pytest.mark.parametrize(("dtype", "bound"), [("float32", 1e-5), ("int8", 0.02)])
def test_clip_vision_on_onnxruntime(clip_file, dtype, bound):
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = load_model(clip_file).encode_image(pixels).double().numpy()
    got = load_model(clip_file, dtype=dtype, backend="onnxruntime").encode_image(pixels.numpy())
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert rel <= bound, rel
