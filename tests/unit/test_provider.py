"""MultimodalEmbeddingProvider on tiny random CLIP, BERT and Whisper files."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
from provider_helpers import make_video, photo, photo_path, tone

import llm_compression.loader as models
from llm_compression.errors import (
    ConfigError,
    InputError,
    ModelFileNotFoundError,
    WrongFamilyError,
)
from llm_compression.provider import (
    CLIPEngine,
    EmbeddingProvider,
    EmbeddingResult,
    MultimodalEmbeddingProvider,
    l2_normalize,
    sample_frames,
)


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _counting_load_model(monkeypatch):
    calls = []
    real = models.load_model

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    return calls


def test_construction_loads_nothing_and_each_model_once(files, monkeypatch):
    calls = _counting_load_model(monkeypatch)
    p = MultimodalEmbeddingProvider(
        text_model=files["bert"], clip_model=files["clip"], audio_model=files["whisper"]
    )
    assert calls == [] and p.loaded == {"text": False, "clip": False, "audio": False}
    assert p.dimension == 32  # from the file's metadata, no model built
    assert calls == []
    p.encode("hello")
    p.encode_batch(["a", "b"])
    assert calls == [str(files["bert"])]
    p.encode_image(photo("coffee"))
    p.encode_image(photo("horse"))
    assert calls == [str(files["bert"]), str(files["clip"])]
    assert p.loaded == {"text": True, "clip": True, "audio": False}


def test_lazy_load_is_thread_safe(files, monkeypatch):
    calls = _counting_load_model(monkeypatch)
    p = MultimodalEmbeddingProvider(text_model=files["bert"])
    barrier = threading.Barrier(4)
    out = [None] * 4

    def work(i):
        barrier.wait()
        out[i] = p.encode("same text")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(_cos(out[0], v) > 0.9999 for v in out)


def test_satisfies_the_protocol(provider):
    assert isinstance(provider, EmbeddingProvider)
    assert not isinstance(object(), EmbeddingProvider)


def test_encode_and_encode_batch(provider):
    v = provider.encode("a cat sat on the mat")
    assert v.shape == (provider.dimension,) == (32,) and v.dtype == np.float32
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    batch = provider.encode_batch(["a cat sat on the mat", "stocks fell", ""])
    assert batch.shape == (3, 32)
    assert _cos(batch[0], v) >= 0.9999
    assert provider.encode_batch([]).shape == (0, 32)
    listed = provider.encode(["a list"])  # sentence-transformers: a list gives a matrix
    assert listed.shape == (1, 32)
    np.testing.assert_array_equal(listed, provider.encode_batch(["a list"]))
    with pytest.raises(InputError, match="string or a list of strings"):
        provider.encode(3)


def test_text_batch_invariance(provider):
    texts = ["hi", "a much longer sentence that has many more tokens than the others " * 4, "ok"]
    alone = np.stack([provider.encode(t) for t in texts])
    for batch_size in (1, 2, 3, 32):
        for a, b in zip(alone, provider.encode_batch(texts, batch_size=batch_size), strict=True):
            assert _cos(a, b) >= 0.9999
    rotated = provider.encode_batch(texts[1:] + texts[:1], batch_size=2)
    assert _cos(rotated[-1], alone[0]) >= 0.9999


def test_batch_size_controls_the_text_model_batch(provider, monkeypatch):
    model = provider._slot("text").get()
    sizes = []
    real = model.encode_text

    def spy(ids, mask):
        sizes.append(len(ids))
        return real(ids, mask)

    monkeypatch.setattr(model, "encode_text", spy)
    provider.encode_batch([f"text {i}" for i in range(10)], batch_size=4)
    assert sizes == [4, 4, 2]


def test_show_progress_writes_a_bar_to_stderr(provider, capsys):
    provider.encode_batch(["a", "b", "c"], batch_size=1)
    assert capsys.readouterr().err == ""
    provider.encode_batch(["a", "b", "c"], batch_size=1, show_progress=True)
    captured = capsys.readouterr()
    assert "3/3" in captured.err and captured.out == ""


def test_text_falls_back_to_the_clip_text_tower(files):
    p = MultimodalEmbeddingProvider(clip_model=files["clip"])
    assert p.dimension == 24
    engine = p.clip_engine
    np.testing.assert_allclose(p.encode("a cat"), engine.encode_text("a cat")[0], atol=1e-6)


def test_wrong_families_are_refused_with_the_fix(files):
    with pytest.raises(WrongFamilyError, match="clip_model expects a CLIP.*pass it as audio_model"):
        MultimodalEmbeddingProvider(clip_model=files["whisper"])
    with pytest.raises(WrongFamilyError, match="audio_model expects a Whisper"):
        MultimodalEmbeddingProvider(audio_model=files["clip"])
    with pytest.raises(WrongFamilyError, match="text_model"):
        MultimodalEmbeddingProvider(text_model=files["whisper"])
    with pytest.raises(ConfigError, match="at least one model"):
        MultimodalEmbeddingProvider()


def test_missing_modality_model(files, tmp_path):
    p = MultimodalEmbeddingProvider(text_model=files["bert"])
    with pytest.raises(ConfigError, match="clip_model="):
        p.encode_image(photo("coffee"))
    with pytest.raises(ConfigError, match="audio_model="):
        p.encode_audio(tone(1, 440), sample_rate=16000)
    with pytest.raises(ModelFileNotFoundError):
        MultimodalEmbeddingProvider(audio_model=tmp_path / "none.parquet")


def test_images_and_pixel_limit(files, provider):
    out = provider.encode_image([photo_path("rocket"), photo("rocket")])
    assert out.shape == (2, 24) and _cos(out[0], out[1]) > 0.999
    small = MultimodalEmbeddingProvider(clip_model=files["clip"], max_pixels=64 * 64)
    with pytest.raises(InputError, match="over the limit"):
        small.encode_image(photo("rocket"))
    res = small.encode_image([photo("rocket")[:64, :64], photo("rocket")], on_error="skip")
    assert res.indices == (0,) and res.errors[0][0] == 1 and "limit" in res.errors[0][1]


# -- audio ---------------------------------------------------------------------------------------


def test_audio_inputs_resampled_and_mixed(provider, tmp_path):
    wave16 = tone(2.0, 440)
    stereo44 = tone(2.0, 440, sr=44100, channels=2)
    path = tmp_path / "tone.flac"
    sf.write(path, stereo44.T, 44100)
    out = provider.encode_audio([wave16, stereo44, path], sample_rate=16000)
    assert out.shape == (3, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one = provider.encode_audio(stereo44, sample_rate=44100)
    assert one.shape == (1, 32)
    assert _cos(one[0], out[0]) > 0.99  # same tone, resampled from 44.1 kHz stereo
    from_file = provider.encode_audio(path)  # a file carries its own rate
    assert _cos(from_file[0], one[0]) >= 0.9999


def test_audio_batch_invariance_mixed_lengths(provider):
    clips = [tone(0.5, 300), tone(3.0, 900), tone(0.2, 5000)]
    alone = np.concatenate([provider.encode_audio(c, sample_rate=16000) for c in clips])
    for batch_size in (3,):
        batched = provider.encode_audio(clips, sample_rate=16000, batch_size=batch_size)
        for a, b in zip(alone, batched, strict=True):
            assert _cos(a, b) >= 0.9999
    reversed_ = provider.encode_audio(clips[::-1], sample_rate=16000, batch_size=2)[::-1]
    for a, b in zip(alone, reversed_, strict=True):
        assert _cos(a, b) >= 0.9999


def test_audio_batch_size_controls_the_model_batch(provider, monkeypatch):
    model = provider._slot("audio").get()
    sizes = []
    real = model.encode_audio

    def spy(mel, frames):
        sizes.append(len(mel))
        return real(mel, frames)

    monkeypatch.setattr(model, "encode_audio", spy)
    provider.encode_audio([tone(0.3, 440)] * 3, sample_rate=16000, batch_size=2)
    assert sizes == [2, 1]


def test_bad_audio(provider, tmp_path):
    nan = tone(1, 440)
    nan[10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        provider.encode_audio(nan, sample_rate=16000)
    with pytest.raises(InputError, match="empty"):
        provider.encode_audio(np.zeros(0, np.float32), sample_rate=16000)
    with pytest.raises(InputError, match="sample rate"):
        provider.encode_audio(tone(1, 440))
    with pytest.raises(InputError):
        provider.encode_audio(np.zeros(100, np.complex64), sample_rate=16000)
    with pytest.raises(ModelFileNotFoundError):
        provider.encode_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(InputError):
        provider.encode_audio(junk)
    good = tone(0.5, 440)
    res = provider.encode_audio(
        [good, tmp_path / "missing.wav", nan, junk, good], sample_rate=16000, on_error="skip"
    )
    assert isinstance(res, EmbeddingResult)
    assert res.indices == (0, 4) and [i for i, _ in res.errors] == [1, 2, 3]
    assert _cos(res.vectors[0], res.vectors[1]) >= 0.9999


# -- video and several modalities ------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "photos.mp4"
    frames = [photo(n) for n in ("chelsea", "astronaut", "coffee", "horse") for _ in range(3)]
    return make_video(path, frames, size=(64, 48))


def test_encode_video_is_the_normalised_mean_of_frame_embeddings(provider, video):
    vec = provider.encode_video(video, frames=4)
    assert vec.shape == (24,) and vec.dtype == np.float32
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    frames = sample_frames(video, 4)
    expected = l2_normalize(provider.encode_image(frames).mean(axis=0))
    assert _cos(vec, expected) >= 0.9999
    all_frames = provider.encode_video(video, frames=100)  # 12 frames: uses all of them
    expected_all = l2_normalize(provider.encode_image(sample_frames(video, 12)).mean(axis=0))
    assert _cos(all_frames, expected_all) >= 0.9999


def test_still_image_is_not_a_video(provider):
    with pytest.raises(InputError, match="still image"):
        provider.encode_video(photo_path("chelsea"))


def test_encode_multimodal(provider, video):
    out = provider.encode_multimodal(
        text="a cat", image=photo("chelsea"), audio=tone(1, 440), video=video, sample_rate=16000
    )
    assert set(out) == {"text", "image", "audio", "video"}
    assert out["text"].shape == (32,) and out["image"].shape == (24,)
    assert out["audio"].shape == (32,) and out["video"].shape == (24,)
    assert _cos(out["image"], provider.encode_image(photo("chelsea"))[0]) >= 0.9999
    assert set(provider.encode_multimodal(text="only text")) == {"text"}
    with pytest.raises(InputError, match="got nothing"):
        provider.encode_multimodal()


def test_cross_modal_similarity_uses_both_clip_towers(provider, files):
    texts = ["a cat", "a rocket", "coffee"]
    images = [photo("chelsea"), photo("rocket")]
    sims = provider.compute_cross_modal_similarity(texts, images)
    assert sims.shape == (3, 2)
    engine = CLIPEngine(files["clip"])
    expected = engine.encode_text(texts) @ engine.encode_image(images).T
    np.testing.assert_allclose(sims, expected, atol=1e-5)


def test_clip_file_as_text_model_with_an_audio_model(files):
    p = MultimodalEmbeddingProvider(text_model=files["clip"], audio_model=files["whisper"])
    assert p.dimension == 24
    engine = CLIPEngine(files["clip"])
    np.testing.assert_allclose(p.encode("a dog"), engine.encode_text("a dog")[0], atol=1e-6)
    assert p.loaded == {"text": True, "audio": False}
