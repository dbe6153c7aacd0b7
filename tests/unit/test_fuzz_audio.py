"""Fuzz: random audio shapes, dtypes, rates and values give a waveform or an InputError (10)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from hostile_helpers import fuzz
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llm_compression.errors import InputError, LLMCompressionError
from llm_compression.preprocess.audio import load_audio, log_mel_batch

DTYPES = st.sampled_from(["float32", "float64", "float16", "int16", "int32", "int8", "uint8",
                          "int64", "uint16", "bool", "complex64"])  # fmt: skip
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3000).filter(
    lambda s: int(np.prod(s)) <= 200_000
)
RATES = st.one_of(
    st.integers(-5, 10**9), st.sampled_from([1, 7, 999, 8000, 16000, 44100, 192000]),
    st.floats(allow_nan=True), st.none(), st.text(max_size=3), st.booleans(),
)  # fmt: skip


def _outcome(call):
    try:
        return call()
    except LLMCompressionError as e:
        assert str(e)  # every typed error explains itself
        return None


@fuzz(60)
@given(arrays=hnp.arrays(DTYPES, SHAPES), rate=RATES)
def test_arrays(arrays, rate):
    out = _outcome(lambda: load_audio(arrays, sample_rate=rate))
    if out is not None:
        assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
        assert out.size <= 16 * arrays.size + 16  # bounded by MIN_SAMPLE_RATE: no memory bomb
        mel = _outcome(lambda: log_mel_batch([out]))
        assert mel is None or mel.shape == (1, 80, 3000)


@fuzz(30)
@given(
    samples=st.integers(0, 20000), rate=st.integers(1, 400_000), channels=st.integers(1, 3),
    width=st.sampled_from([1, 2, 4]), cut=st.floats(0, 1), junk=st.binary(max_size=64),
)  # fmt: skip
def test_wav_files(tmp_path_factory, samples, rate, channels, width, cut, junk):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.random.default_rng(samples).bytes(samples * channels * width))
    raw = buf.getvalue()
    raw = raw[: int(len(raw) * cut)] + junk if cut < 0.9 else raw
    path = tmp_path_factory.mktemp("wav") / "x.wav"
    path.write_bytes(raw)
    out = _outcome(lambda: load_audio(path))
    assert out is None or (out.dtype == np.float32 and out.ndim == 1)


def test_a_tiny_sample_rate_is_refused_not_resampled_into_gigabytes():
    # 100k samples at 1 Hz would resample to 1.6e9 samples (6.4 GB) at 16 kHz.
    for rate in (1, 999, 10**7):
        with pytest.raises(InputError, match=f"sample rate of {rate} Hz; expected 1,000 to"):
            load_audio(np.zeros(100_000, np.float32), sample_rate=rate)
    assert load_audio(np.zeros(1000, np.float32), sample_rate=1000).shape == (16000,)


def test_an_empty_two_channel_array_says_empty():
    with pytest.raises(InputError, match="is empty"):
        load_audio(np.zeros((2, 0), np.float32), sample_rate=16000)
