"""SentenceEncoder (BERT / MiniLM) against a tiny random HuggingFace BertModel."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_tiny import tiny_bert

from llm_compression.errors import InputError
from llm_compression.families import SentenceEncoder, build_model
from llm_compression.loader import load_weights_into
from llm_compression.preprocess.text import Tokenizer
from llm_compression.provider.inputs import as_texts
from llm_compression.provider.modalities import embed_texts

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "red",
    "blue",
    "big",
    "small",
    "runs",
    "fast",
]


def word_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer over WORDS (ids < 50 to fit the tiny model) with BERT's specials."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Backend(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )  # fmt: skip
    config = {
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }
    return Tokenizer.from_files(
        {
            "tokenizer.json": tok.to_str().encode(),
            "tokenizer_config.json": json.dumps(config).encode(),
        }
    )


@pytest.fixture(scope="module")
def pair():
    hf, cfg, state = tiny_bert(max_seq_length=8)
    model = load_weights_into(build_model(cfg), state)
    model.tokenizer = word_tokenizer()
    return hf, model


def hf_embed(hf, ids, att, pooling="mean", normalize=True):
    with torch.inference_mode():
        h = hf(input_ids=ids, attention_mask=att).last_hidden_state
    if pooling == "cls":
        out = h[:, 0]
    else:
        m = att[..., None].float()
        out = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(out, dim=-1) if normalize else out


def test_mean_pooled_embeddings_match_hf_with_padding(pair):
    hf, model = pair
    ids = torch.randint(5, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    att = torch.ones_like(ids)
    att[1, 6:] = 0
    att[2, 2:] = 0
    pooled = model.encode(ids, att)  # the model pools; the provider normalises
    torch.testing.assert_close(
        pooled, hf_embed(hf, ids, att, normalize=False), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        F.normalize(pooled, dim=-1), hf_embed(hf, ids, att), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        model.encode(ids[:1]), hf_embed(hf, ids[:1], att[:1], normalize=False), atol=1e-5, rtol=1e-5
    )


def test_cls_pooling_and_no_normalize():
    hf, cfg, state = tiny_bert()
    cls_cfg = dataclasses.replace(cfg, pooling="cls")
    model = load_weights_into(build_model(cls_cfg), state)
    ids = torch.randint(5, 50, (2, 6))
    ref = hf_embed(hf, ids, torch.ones_like(ids), "cls", normalize=False)
    torch.testing.assert_close(model.encode(ids), ref, atol=1e-5, rtol=1e-5)
    raw = load_weights_into(build_model(dataclasses.replace(cfg, normalize=False)), state).encode(
        ids
    )
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))


def test_the_files_normalize_flag_is_applied_once_by_the_provider(pair):
    hf, model = pair
    texts = ["the cat sat", "a big red dog runs fast"]
    ids, att = model.tokenizer.encode_batch(texts, max_length=8)
    raw = hf_embed(hf, torch.from_numpy(ids), torch.from_numpy(att), normalize=False).numpy()
    assert model.normalizes  # the sentence-transformers folder ends in Normalize
    for normalize in (True, False):  # the file's own Normalize applies either way
        got = embed_texts(model, texts, normalize=normalize)
        np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    plain = load_weights_into(build_model(dataclasses.replace(model.config, normalize=False)),
                              dict(model.state_dict()))  # fmt: skip
    plain.tokenizer = model.tokenizer
    np.testing.assert_allclose(embed_texts(plain, texts, normalize=False), raw, atol=1e-5)


def test_embed_texts_in_input_order_any_batch_size(pair):
    hf, model = pair
    texts = ["the cat sat on the mat", "a dog", "", "red blue big small cat dog runs fast", "cat"]
    ids, att = model.tokenizer.encode_batch(texts, max_length=8)
    expected = hf_embed(hf, torch.from_numpy(ids), torch.from_numpy(att)).numpy()
    for batch_size in (1, 2, 32):
        got = embed_texts(model, texts, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == (5, model.embedding_dim)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert ids.shape[1] == 8  # the long text was truncated to max_seq_length, [SEP] kept
    assert ids[3, 7] == 3


@pytest.mark.parametrize("texts", [["ok", None], [b"bytes"], 3])
def test_bad_texts_raise(pair, texts):
    with pytest.raises(InputError):
        embed_texts(pair[1], as_texts(texts))


def test_bad_batch_size_raises(pair):
    with pytest.raises(InputError, match="batch_size"):
        embed_texts(pair[1], ["cat"], batch_size=0)


def test_final_norm_comes_from_the_config():
    _, cfg, _ = tiny_bert()
    assert cfg.encoder.final_norm is False  # post-norm BERT: each block already ends in a norm
    assert not any(k.startswith("final_norm") for k in build_model(cfg).state_dict())
    enc = dataclasses.replace(cfg.encoder, final_norm=True)
    model = build_model(dataclasses.replace(cfg, encoder=enc))
    assert isinstance(model, SentenceEncoder)
    assert any(k.startswith("final_norm") for k in model.state_dict())
