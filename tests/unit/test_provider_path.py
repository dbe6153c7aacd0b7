"""The one embedding path: global length sorting, normalisation once, one batch_size check,
sentence-transformers' ``encode``, and no per-class dispatch in the provider."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from provider_helpers import photo, tone

import llm_compression.provider.batching as batching
from llm_compression.errors import InputError
from llm_compression.provider import CLIPEngine, MultimodalEmbeddingProvider
from llm_compression.provider.modalities import text_ids

PACKAGE = Path(__file__).resolve().parents[2] / "llm_compression"
TEXTS = [
    "short",
    "a much longer sentence about a cat that sat on a mat near the door " * 3,
    "ok",
    "a sentence of middling length about dogs",
    "",
    "another fairly long sentence, with commas, clauses and several more words in it",
    "x",
]


def _spy(monkeypatch, model, name):
    """Record the (rows, width) of every call to ``model.<name>``."""
    calls = []
    real = getattr(model, name)

    def spy(x, *rest):
        calls.append(tuple(x.shape[:2]))
        return real(x, *rest)

    monkeypatch.setattr(model, name, spy)
    return calls


# -- global length sorting -----------------------------------------------------------------------


def test_sorted_batches_restore_input_order_with_the_vectors_of_one_at_a_time(provider):
    alone = np.stack([provider.encode(t) for t in TEXTS])
    for batch_size in (1, 2, 3, 32):
        batched = provider.encode_batch(TEXTS, batch_size=batch_size)
        np.testing.assert_allclose(batched, alone, atol=2e-6, rtol=0)
    clip = provider.clip_engine
    texts = [t for t in TEXTS if t]  # CLIP refuses empty text
    alone = np.concatenate([clip.encode_text(t) for t in texts])
    np.testing.assert_allclose(clip.encode_text(texts, batch_size=2), alone, atol=2e-6, rtol=0)


def test_batches_are_cut_from_the_whole_call_sorted_by_token_count(provider, monkeypatch):
    model = provider._slot("text").get()
    _, mask = text_ids(model, TEXTS)
    lengths = mask.sum(axis=1)
    calls = _spy(monkeypatch, model, "encode_text")
    provider.encode_batch(TEXTS, batch_size=2)
    expected = sorted(lengths, reverse=True)
    assert calls == [(len(expected[i : i + 2]), expected[i]) for i in range(0, len(TEXTS), 2)]
    padded = sum(rows * width for rows, width in calls)
    in_order = sum(2 * max(lengths[i : i + 2]) for i in range(0, len(TEXTS), 2))
    assert padded < in_order  # sorting over the whole call saves padding


# -- normalisation once ------------------------------------------------------------------------


def _count_normalize(monkeypatch):
    calls = []
    real = batching.l2_normalize

    def counting(x):
        calls.append(len(x))
        return real(x)

    monkeypatch.setattr(batching, "l2_normalize", counting)
    return calls


def test_models_return_features_and_the_provider_normalises_once(provider, monkeypatch):
    clip = provider.clip_engine
    texts = ["a cat", "a rocket on the pad", "coffee"]
    ids, _ = text_ids(clip.model, texts)
    raw = clip.model.encode_text(torch.from_numpy(ids)).numpy()
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # features, not unit
    calls = _count_normalize(monkeypatch)
    got = clip.encode_text(texts, batch_size=2)
    assert calls == [3]  # one normalisation of the whole result, not one per batch or layer
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    for call, n in (
        (lambda: provider.encode_batch(TEXTS, batch_size=3), len(TEXTS)),
        (lambda: provider.encode_image([photo("coffee"), photo("horse")], batch_size=1), 2),
        (lambda: provider.encode_audio([tone(0.5, 440)] * 3, sample_rate=16000), 3),
    ):
        calls.clear()
        out = call()
        assert calls == [n]
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_normalize_embeddings_false_keeps_the_files_own_pipeline(files):
    clip_text = MultimodalEmbeddingProvider(clip_model=files["clip"])
    model = clip_text.clip_engine.model
    ids, _ = text_ids(model, ["a cat"])
    raw = model.encode_text(torch.from_numpy(ids)).numpy()[0]
    got = clip_text.encode("a cat", normalize_embeddings=False)
    np.testing.assert_allclose(got, raw, atol=1e-6)  # CLIP: the projected features
    minilm = MultimodalEmbeddingProvider(text_model=files["bert"])
    vec = minilm.encode("a cat", normalize_embeddings=False)  # MiniLM ends in Normalize
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(vec, minilm.encode("a cat"), atol=1e-7)


# -- one batch_size check -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8", None])
def test_every_entry_point_refuses_a_bad_batch_size(provider, bad):
    clip = provider.clip_engine
    calls = [
        lambda: provider.encode("a", batch_size=bad),
        lambda: provider.encode_batch(["a"], batch_size=bad),
        lambda: provider.encode_batch([], batch_size=bad),
        lambda: provider.encode_image(photo("coffee"), batch_size=bad),
        lambda: provider.encode_audio(tone(0.2, 440), sample_rate=16000, batch_size=bad),
        lambda: provider.compute_cross_modal_similarity("a", photo("coffee"), batch_size=bad),
        lambda: clip.encode_text("a", batch_size=bad),
        lambda: clip.encode_image(photo("coffee"), batch_size=bad),
    ]
    for call in calls:
        with pytest.raises(InputError, match="batch_size must be a positive integer"):
            call()


def test_the_batch_size_check_is_written_once():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    found = [p.name for p, text in sources.items() if "batch_size must be" in text]
    assert found == ["batching.py"]


def test_the_provider_never_dispatches_on_model_classes():
    """Which file embeds what comes from the registry; how, from the model's encode_<modality>."""
    for path in (PACKAGE / "provider").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"isinstance\([^)]*(model|engine)", text), path.name
        assert not re.search(r"import[^\n]*\b(SentenceEncoder|Whisper|CLIP)\b", text), path.name
        assert not re.search(r"families\.(bert|clip|whisper)", text), path.name


# -- sentence-transformers' encode ------------------------------------------------------------


def test_encode_follows_sentence_transformers(provider):
    one = provider.encode("a cat")
    assert one.shape == (32,) and one.dtype == np.float32
    many = provider.encode(["a cat", "a dog"], batch_size=1, show_progress_bar=False)
    assert many.shape == (2, 32)
    np.testing.assert_allclose(many[0], one, atol=2e-6)
    tensor = provider.encode(["a cat", "a dog"], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 32)
    rows = provider.encode(["a cat", "a dog"], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 2 and rows[0].shape == (32,)
    assert isinstance(provider.encode("a cat", convert_to_tensor=True), torch.Tensor)
    assert provider.encode([]).shape == (0, 32)


def test_encode_progress_bar(provider, capsys):
    provider.encode(["a", "b", "c"], batch_size=1, show_progress_bar=True)
    assert "3/3" in capsys.readouterr().err


def test_clip_engine_runs_on_the_provider_path(files):
    engine = CLIPEngine(files["clip"])
    p = MultimodalEmbeddingProvider(clip_model=files["clip"])
    np.testing.assert_array_equal(engine.encode_text(TEXTS[:4]), p.encode(TEXTS[:4]))
    image = photo("rocket")
    np.testing.assert_array_equal(engine.encode_image(image), p.encode_image(image))


def test_clip_truncation_keeps_the_end_token_as_openai_clip_does(provider):
    model = provider.clip_engine.model
    texts = ["a photo of a cat", "a very long caption about many things " * 20, "dog"]
    ids, mask = text_ids(model, texts)
    eos, context = model.config.eos_token_id, model.config.context_length
    for row, m, text in zip(ids, mask, texts, strict=True):
        full = model.tokenizer.encode(text)  # clip.tokenize(truncate=True): cut, end token last
        expected = full if len(full) <= context else full[: context - 1] + [eos]
        assert row[m.astype(bool)].tolist() == expected
    assert ids.shape[1] == context and mask[1].all()
