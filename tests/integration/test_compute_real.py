"""Compute modes on real weights: bfloat16 and int8 against our float32 (issue #11 targets).

MiniLM is the real all-MiniLM-L6-v2 (cosine to float32 per sentence); CLIP is the real-shape
ViT-B/32 with random weights (relative L2 of the image features to float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_compression.convert import convert
from llm_compression.convert.random_init import save_random_clip
from llm_compression.loader import load_model
from llm_compression.provider import MultimodalEmbeddingProvider

pytestmark = pytest.mark.integration

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome",
    "The cat sits outside", "A man is playing guitar", "I love pasta", "Do you like pizza?",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "short",
]  # fmt: skip
# issue #11: int8 cosine >= 0.99 to float32 (MiniLM), relative L2 <= 0.005 (bf16) / 0.02 (int8, CLIP)
MINILM_COSINE = {"bfloat16": 0.999, "int8": 0.99}
CLIP_REL_L2 = {"bfloat16": 0.005, "int8": 0.02}


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
def test_minilm_modes_keep_cosine(real_minilm_parquet, mode):
    exact = MultimodalEmbeddingProvider(text_model=real_minilm_parquet).encode_batch(SENTENCES)
    fast = MultimodalEmbeddingProvider(text_model=real_minilm_parquet, dtype=mode)
    cos = (exact * fast.encode_batch(SENTENCES)).sum(axis=1)  # both L2-normalised
    assert cos.mean() >= MINILM_COSINE[mode], (cos.mean(), cos.min())
    assert cos.min() >= MINILM_COSINE[mode] - 0.02, cos.min()


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    folder = save_random_clip(tmp_path_factory.mktemp("clip_hf"))
    return convert(folder, tmp_path_factory.mktemp("clip") / "clip.parquet", dtype="float32")


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
def test_clip_modes_keep_relative_l2(clip_file, mode):
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = load_model(clip_file).encode_image(pixels).double()
        got = load_model(clip_file, dtype=mode).encode_image(pixels).double()
    rel = float((got - ref).norm() / ref.norm())
    assert rel <= CLIP_REL_L2[mode], rel


def test_int8_clip_holds_int8_weights(clip_file):
    model = load_model(clip_file, dtype="int8")
    exact = sum(p.numel() * p.element_size() for p in load_model(clip_file).parameters())
    floats = sum(p.numel() * p.element_size() for p in model.parameters())
    assert floats < 0.01 * exact  # what stays float: norms, biases, position tables
    assert model.text.token_embed.values.dtype == torch.int8  # the 101 MB token table: 25 MB
    assert np.isclose(model.logit_scale.item(), load_model(clip_file).logit_scale.item())
