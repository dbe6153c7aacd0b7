"""preprocess.audio: loading, mixing, resampling, errors, and log-mel vs WhisperFeatureExtractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from llm_compression.errors import InputError, ModelFileNotFoundError
from llm_compression.preprocess.audio import (
    N_SAMPLES,
    load_audio,
    log_mel,
    log_mel_batch,
    mel_filters,
    resample,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_librosa(n_mels):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)
    np.testing.assert_allclose(mel_filters(n_mels), ref, atol=1e-8)


def test_resample_equals_librosa_soxr_hq():
    librosa = pytest.importorskip("librosa")
    x = _noise(12345)
    for sr in (8000, 22050, 44100, 48000):
        np.testing.assert_array_equal(
            resample(x, sr), librosa.resample(x, orig_sr=sr, target_sr=16000)
        )


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("n", [1, 400, 16000 * 7 + 13, N_SAMPLES, N_SAMPLES + 5000])
def test_log_mel_matches_whisper_feature_extractor(n_mels, n):
    transformers = pytest.importorskip("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    audio = _noise(n, seed=n)
    ref = fe(audio, sampling_rate=16000, return_tensors="pt").input_features[0]
    got = log_mel(audio, n_mels=n_mels)
    assert got.shape == (n_mels, 3000) and got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= 1e-4


def test_log_mel_batch_floors_each_clip_separately():
    transformers = pytest.importorskip("transformers")
    clips = [_noise(8000, 1), 10 * _noise(20000, 2), np.zeros(100, np.float32)]
    ref = transformers.WhisperFeatureExtractor()(clips, sampling_rate=16000, return_tensors="pt")
    got = log_mel_batch(clips)
    assert (got - ref.input_features).abs().max().item() <= 1e-4
    torch.testing.assert_close(got[1], log_mel(clips[1]))


def test_log_mel_accepts_tensors_and_rejects_bad_input():
    audio = _noise(1000)
    torch.testing.assert_close(log_mel(torch.from_numpy(audio)), log_mel(audio))
    with pytest.raises(InputError, match="empty"):
        log_mel(np.zeros(0, np.float32))
    with pytest.raises(InputError, match="1-D"):
        log_mel(np.zeros((2, 100), np.float32))
    with pytest.raises(InputError, match="NaN"):
        log_mel(np.full(100, np.nan, np.float32))
    with pytest.raises(InputError, match="n_mels"):
        log_mel(audio, n_mels=0)
    with pytest.raises(InputError):
        log_mel_batch([])


def test_fixture_files_load():
    mono = load_audio(FIXTURES / "hello_world.wav")
    assert mono.dtype == np.float32 and mono.ndim == 1 and len(mono) == 60111
    stereo = load_audio(str(FIXTURES / "hello_world_stereo_44k.flac"))
    info = soundfile.info(FIXTURES / "hello_world_stereo_44k.flac")
    assert info.channels == 2 and info.samplerate == 44100
    assert len(stereo) == int(np.ceil(info.frames * 16000 / 44100))
    data, _ = soundfile.read(FIXTURES / "hello_world_stereo_44k.flac", dtype="float32")
    np.testing.assert_allclose(stereo, resample(data.mean(axis=1), 44100), atol=1e-6)


def test_file_sample_rate_must_agree(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, _noise(800), 8000)
    assert len(load_audio(path, sample_rate=8000)) == 1600
    with pytest.raises(InputError, match="8000 Hz"):
        load_audio(path, sample_rate=16000)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_formats_via_libsndfile(tmp_path, fmt):
    path = tmp_path / f"tone.{fmt}"
    t = np.arange(22050) / 22050
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    out = load_audio(path)
    assert abs(len(out) - 16000) <= 1200  # mp3 adds encoder delay/padding
    assert 0.1 < float(np.abs(out).max()) < 0.5


def test_m4a_via_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=24000, layout="stereo")
        t = np.arange(24000) / 24000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = 24000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    out = load_audio(path)
    assert abs(len(out) - 16000) <= 2000
    assert 0.1 < float(np.abs(out).max()) < 0.5


def test_arrays_need_a_sample_rate():
    with pytest.raises(InputError, match="sample_rate"):
        load_audio(_noise(100))
    np.testing.assert_array_equal(load_audio(_noise(100), sample_rate=16000), _noise(100))


def test_array_layouts_and_dtypes_mix_to_mono():
    left, right = _noise(3000, 1), _noise(3000, 2)
    expected = ((left.astype(np.float64) + right) / 2).astype(np.float32)
    for arr in (np.stack([left, right]), np.stack([left, right], axis=1)):
        np.testing.assert_allclose(load_audio(arr, sample_rate=16000), expected, atol=1e-7)
    pcm = np.array([0, 16384, -32768], np.int16)
    np.testing.assert_allclose(load_audio(pcm, sample_rate=16000), [0.0, 0.5, -1.0])
    pcm32 = np.array([0, 2**30], np.int32)
    np.testing.assert_allclose(load_audio(pcm32, sample_rate=16000), [0.0, 0.5])
    u8 = np.array([128, 192, 0], np.uint8)
    np.testing.assert_allclose(load_audio(u8, sample_rate=16000), [0.0, 0.5, -1.0])
    assert load_audio(torch.from_numpy(left), sample_rate=8000).shape == (6000,)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.1, np.inf], np.float32), "NaN or infinite"),
        (np.array([np.nan], np.float64), "NaN or infinite"),
        (np.zeros((100, 200), np.float32), "channels"),
        (np.zeros((2, 3, 4), np.float32), "shape"),
        (np.zeros(10, np.int64), "dtype"),
        (np.zeros(10, np.complex64), "dtype"),
        ([0.1, 0.2], "numpy"),
    ],
)
def test_bad_arrays(bad, match):
    with pytest.raises(InputError, match=match):
        load_audio(bad, sample_rate=16000)


def test_bad_files(tmp_path):
    with pytest.raises(ModelFileNotFoundError):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"definitely not audio" * 10)
    with pytest.raises(InputError, match="junk.wav"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(InputError, match="directory"):
        load_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match="empty"):
        load_audio(empty)
    with pytest.raises(InputError, match="sample_rate"):
        load_audio(_noise(10), sample_rate=0)
