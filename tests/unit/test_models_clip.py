"""CLIP towers against a tiny random HuggingFace CLIPModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_tiny import tiny_clip

from llm_compression.errors import InputError
from llm_compression.families import CLIP, build_model
from llm_compression.loader import load_weights_into
from llm_compression.provider.modalities import embed_images, embed_texts
from llm_compression.provider.modalities import text_ids as tokenize


@pytest.fixture(scope="module", params=[49, 2], ids=["eos49", "legacy-eos2"])
def pair(request):
    hf, cfg, state = tiny_clip(eos_token_id=request.param)
    return hf, load_weights_into(build_model(cfg), state)


def text_ids(eos: int) -> torch.Tensor:
    ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(0))
    ids[0, 4:], ids[1, 9], ids[2, 6:] = eos, eos, eos  # the end token is also the largest id
    return ids


def _features(out):
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return getattr(out, "pooler_output", out)


def test_embeddings_and_logits_match_hf(pair):
    hf, model = pair
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = text_ids(model.config.eos_token_id)
    with torch.inference_mode():
        ref = hf(input_ids=ids, pixel_values=pixels)
        ref_image = _features(hf.get_image_features(pixel_values=pixels))
        ref_text = _features(hf.get_text_features(input_ids=ids))
    image, text = model.encode_image(pixels), model.encode_text(ids)
    # the models return the projected features, unnormalised (as get_image/text_features)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(image.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(F.normalize(image, dim=-1), ref.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.normalize(text, dim=-1), ref.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model.similarity_logits(image, text), ref.logits_per_image, atol=1e-4, rtol=1e-5
    )


def test_embed_images_uses_clip_preprocessing(pair):
    from llm_compression.preprocess.image import DEFAULT_MAX_PIXELS, clip_pixels

    _, model = pair
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    pixels = clip_pixels(images, size=32, mean=model.config.image_mean, std=model.config.image_std)
    expected = F.normalize(model.encode_image(pixels), dim=-1).numpy()
    got = embed_images(model, images, max_pixels=DEFAULT_MAX_PIXELS, batch_size=2).vectors
    assert got.shape == (3, model.embedding_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_inputs_raise(pair):
    _, model = pair
    with pytest.raises(InputError, match="shape"):
        model.encode_image(torch.zeros(1, 3, 16, 16))
    with pytest.raises(InputError, match="context"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))


def test_meta_build_names():
    _, cfg, state = tiny_clip()
    model = build_model(cfg)
    assert isinstance(model, CLIP)
    assert set(model.state_dict()) == set(state)


def clip_word_tokenizer():
    """Word-level tokenizer: words -> ids 5.., <|startoftext|> 48, <|endoftext|> 49 (as CLIP)."""
    import json

    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors

    from llm_compression.preprocess.text import Tokenizer

    words = ["a", "photo", "of", "cat", "dog", "red", "blue", "big", "small", "the", "on", "mat"]
    vocab = {w: 5 + i for i, w in enumerate(words)}
    vocab.update({"<unk>": 0, "<|startoftext|>": 48, "<|endoftext|>": 49})
    tok = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 48), ("<|endoftext|>", 49)],
    )
    config = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    return Tokenizer.from_files(
        {
            "tokenizer.json": tok.to_str().encode(),
            "tokenizer_config.json": json.dumps(config).encode(),
        }
    )


def test_embed_texts_tokenizes_pads_and_truncates():
    _, cfg, state = tiny_clip(eos_token_id=49)
    model = load_weights_into(build_model(cfg), state)
    model.tokenizer = clip_word_tokenizer()
    long = " ".join(["a big red cat on the mat"] * 3)  # 21 words + 2 specials > context 16
    texts = ["a photo of a cat", long, "dog"]
    ids, mask = tokenize(model, texts)
    assert ids.shape == (3, 16) and ids[1, -1] == 49 and ids[1, 0] == 48
    assert ids[2].tolist()[:3] == [48, 9, 49] and mask[2].tolist()[:4] == [1, 1, 1, 0]
    expected = F.normalize(model.encode_text(torch.from_numpy(ids)), dim=-1).numpy()
    np.testing.assert_allclose(embed_texts(model, texts, batch_size=2), expected, atol=1e-6)
    single = embed_texts(model, ["dog"])  # padding never changes a text's embedding (causal)
    np.testing.assert_allclose(single[0], expected[2], atol=1e-6)
    with pytest.raises(InputError, match="empty"):
        embed_texts(model, ["a cat", "  "])
