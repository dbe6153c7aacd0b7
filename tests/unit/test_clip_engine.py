"""CLIPEngine on a tiny random CLIP converted from transformers (behaviour, not semantics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from provider_helpers import photo, photo_path, tiny_model_file

from llm_compression.errors import InputError, ModelFileNotFoundError, WrongFamilyError
from llm_compression.provider import CLIPEngine, EmbeddingResult, softmax

HF_LOGIT_SCALE_INIT = 2.6592  # transformers' CLIPConfig.logit_scale_init_value


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "provider_models"


@pytest.fixture(scope="module")
def engine(root):
    return CLIPEngine(tiny_model_file("clip", root))


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _photos(names=("chelsea", "astronaut", "coffee")):
    return [photo(n) for n in names]


def test_wrong_family_names_the_expected_file(root):
    with pytest.raises(WrongFamilyError, match="expects a CLIP weight file.*text_model"):
        CLIPEngine(tiny_model_file("bert", root))
    with pytest.raises(ModelFileNotFoundError):
        CLIPEngine(root / "missing.parquet")


def test_encode_text_shape_dtype_norm(engine):
    out = engine.encode_text(["a cat", "a photo of a rocket on the launch pad", "x"])
    assert out.shape == (3, engine.embedding_dim) == (3, 24)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert engine.encode_text("a cat").shape == (1, 24)
    with pytest.raises(InputError, match="input 3: the text is empty"):
        engine.encode_text(["a", "b", "c", " "], batch_size=2)


def test_every_image_input_kind_gives_the_same_vector(engine):
    arr = photo("chelsea")
    pil = Image.fromarray(arr)
    out = engine.encode_image([photo_path("chelsea"), pil, arr, arr.astype(np.float32) / 255])
    assert out.shape == (4, 24) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    for row in out[1:]:
        assert _cos(out[0], row) > 0.999
    assert engine.encode_image(pil).shape == (1, 24)
    assert engine.encode_image(np.stack([arr[:100, :100]] * 2)).shape == (2, 24)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "CMYK", "I;16"])
def test_any_pil_mode(engine, mode):
    im = Image.fromarray(photo("astronaut")[:64, :80]).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        im = Image.fromarray(np.asarray(im).astype(np.uint16) * 257)
        assert im.mode.startswith("I;16")
    out = engine.encode_image(im)
    assert out.shape == (1, 24) and np.isfinite(out).all()


def test_image_batch_invariance_mixed_sizes(engine):
    images = [photo(n) for n in ("chelsea", "astronaut", "coffee", "horse", "rocket")]
    images[1] = images[1][:37, :300]  # odd aspect ratios and sizes
    images[3] = np.asarray(Image.fromarray(images[3]).resize((7, 9)))
    alone = np.concatenate([engine.encode_image(im) for im in images])
    for batch_size in (2, 5, 32):
        batched = engine.encode_image(images, batch_size=batch_size)
        for a, b in zip(alone, batched, strict=True):
            assert _cos(a, b) >= 0.9999
    reversed_ = engine.encode_image(images[::-1], batch_size=3)[::-1]
    for a, b in zip(alone, reversed_, strict=True):
        assert _cos(a, b) >= 0.9999


def test_text_batch_invariance_mixed_lengths(engine):
    texts = ["a", "a photo of a cat sitting on a warm windowsill in the afternoon sun " * 3, "dog"]
    alone = np.concatenate([engine.encode_text(t) for t in texts])
    for batch_size in (1, 2, 8):
        for a, b in zip(alone, engine.encode_text(texts, batch_size=batch_size), strict=True):
            assert _cos(a, b) >= 0.9999
    shuffled = engine.encode_text([texts[2], texts[0], texts[1]])
    assert _cos(shuffled[1], alone[0]) >= 0.9999


def test_batch_size_controls_model_calls(engine, monkeypatch):
    sizes = []
    real = engine.model.encode_image

    def spy(pixels):
        sizes.append(pixels.shape[0])
        return real(pixels)

    monkeypatch.setattr(engine.model, "encode_image", spy)
    engine.encode_image([photo("coffee")[:50, :50]] * 7, batch_size=3)
    assert sizes == [3, 3, 1]


def test_progress_bar_on_stderr(engine, capsys):
    engine.encode_image(_photos(), batch_size=2, show_progress=True)
    err = capsys.readouterr().err
    assert "CLIP images" in err and "3/3" in err


def test_similarity_and_logits(engine):
    t = engine.encode_text(["a cat", "a rocket"])
    i = engine.encode_image(_photos())
    sims = engine.compute_similarity(t, i)
    assert sims.shape == (2, 3)
    np.testing.assert_allclose(sims, t @ i.T, atol=1e-5)
    assert engine.logit_scale == pytest.approx(math.exp(HF_LOGIT_SCALE_INIT), rel=1e-4)
    logits = engine.compute_similarity(t, i, logits=True)
    np.testing.assert_allclose(logits, sims * engine.logit_scale, rtol=1e-5)


def test_find_best_matches_agrees_with_similarity(engine):
    images = _photos(("chelsea", "astronaut", "coffee", "horse"))
    sims = engine.compute_similarity(engine.encode_text("a cat"), engine.encode_image(images))[0]
    best = engine.find_best_matches("a cat", images, top_k=3)
    assert [i for i, _ in best] == list(np.argsort(-sims)[:3])
    np.testing.assert_allclose([s for _, s in best], np.sort(sims)[::-1][:3], atol=1e-5)
    assert len(engine.find_best_matches("a cat", images, top_k=50)) == 4
    with pytest.raises(InputError, match="top_k"):
        engine.find_best_matches("a cat", images, top_k=0)


def test_find_best_text_matches_agrees_with_similarity(engine):
    texts = ["a cat", "an astronaut", "a cup of coffee", "a horse", "a rocket"]
    sims = engine.compute_similarity(engine.encode_image(photo("horse")), engine.encode_text(texts))
    best = engine.find_best_text_matches(photo("horse"), texts, top_k=2)
    assert [i for i, _ in best] == list(np.argsort(-sims[0])[:2])
    scores = [s for _, s in best]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(InputError, match="one image"):
        engine.find_best_text_matches(_photos(), texts)


def test_zero_shot_is_clip_softmax(engine):
    labels = ["cat", "astronaut", "coffee", "horse"]
    probs = engine.zero_shot_classification(photo("chelsea"), labels)
    assert list(probs) == labels
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    prompts = [f"a photo of a {label}." for label in labels]
    cos = engine.compute_similarity(
        engine.encode_image(photo("chelsea")), engine.encode_text(prompts)
    )
    np.testing.assert_allclose(
        list(probs.values()), softmax(engine.logit_scale * cos[0]), atol=1e-5
    )
    other = engine.zero_shot_classification(photo("chelsea"), labels, template="{}")
    assert list(other.values()) != pytest.approx(list(probs.values()))


@pytest.mark.parametrize(
    "labels,template,match",
    [([], "a {}", "empty"), (["a", "a"], "a {}", "unique"), (["a", "b"], "no slot", "template")],
)
def test_zero_shot_bad_arguments(engine, labels, template, match):
    with pytest.raises(InputError, match=match):
        engine.zero_shot_classification(photo("chelsea"), labels, template=template)


def test_bad_images_raise_typed_errors(engine, tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="input 1: image file not found"):
        engine.encode_image([photo("coffee"), tmp_path / "missing.png"])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(InputError):
        engine.encode_image(corrupt)
    with pytest.raises(InputError, match="empty"):
        engine.encode_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(InputError, match="not supported"):
        engine.encode_image(np.zeros((8, 8, 3), np.complex64))
    with pytest.raises(InputError, match=r"expected \[0, 1\]"):
        engine.encode_image(np.full((8, 8, 3), 255.0, np.float32))
    with pytest.raises(InputError, match="cannot read an image"):
        engine.encode_image(12)


def test_pixel_limit_is_configurable(root):
    small = CLIPEngine(tiny_model_file("clip", root), max_pixels=100 * 100)
    assert small.encode_image(photo("coffee")[:100, :100]).shape == (1, 24)
    with pytest.raises(InputError, match="over the limit"):
        small.encode_image(photo("coffee"))
    with pytest.raises(InputError, match="over the limit"):
        small.encode_image(photo_path("coffee"))  # checked from the header, before decoding
    with pytest.raises(InputError, match="max_pixels"):
        CLIPEngine(tiny_model_file("clip", root), max_pixels=0)


def test_on_error_skip_reports_and_embeds_the_rest(engine, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    good = _photos(("chelsea", "rocket"))
    items = [good[0], tmp_path / "missing.png", corrupt, np.zeros((0, 4, 3), np.uint8), good[1]]
    res = engine.encode_image(items, batch_size=2, on_error="skip")
    assert isinstance(res, EmbeddingResult)
    assert res.indices == (0, 4)
    assert [i for i, _ in res.errors] == [1, 2, 3]
    assert "not found" in res.errors[0][1] and "empty" in res.errors[2][1]
    expected = engine.encode_image(good)
    for a, b in zip(res.vectors, expected, strict=True):
        assert _cos(a, b) >= 0.9999
