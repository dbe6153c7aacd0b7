"""Audio -> 16 kHz mono waveforms -> Whisper log-mel spectrograms, without transformers.

`load_audio` reads files (wav, flac, ogg, mp3 ... through libsndfile; anything else, such as m4a,
aac, opus or the audio track of a video, through PyAV/FFmpeg) or takes arrays, mixes to mono by
averaging the channels and resamples to 16 kHz with soxr "HQ" (what ``librosa.resample``'s default
``soxr_hq`` runs, including its output length ``ceil(n * 16000 / sr)``).

`log_mel` computes the features of transformers' ``WhisperFeatureExtractor``: pad with zeros or trim
to 30 s, STFT (n_fft 400, hop 160, periodic Hann, centred with reflect padding), power, Slaney mel
filters, ``log10(max(x, 1e-10))``, floor at ``max - 8``, then ``(x + 4) / 4``; the last STFT frame
is dropped so 480000 samples give 3000 frames.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelFileNotFoundError

SAMPLE_RATE = 16000  # Whisper's input rate
N_FFT = 400  # 25 ms windows at 16 kHz
HOP_LENGTH = 160  # 10 ms hop: 100 frames per second
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in one window
MAX_CHANNELS = 64  # a 2-D array with more "channels" than this is rejected (probably a batch)
# Resampling to 16 kHz multiplies the length by 16000 / rate: at 1 Hz a 1 MB clip would become
# 64 GB. Real audio is sampled at 8 kHz and up; below 1 kHz a rate is a mistake. Above 1 MHz
# (ultrasonic recorders stop at 768 kHz) soxr's ratio is out of its range.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 1_000_000
_INT_SCALE = {
    np.dtype(np.int16): 32768.0,
    np.dtype(np.int32): 2147483648.0,
    np.dtype(np.int8): 128.0,
}

AudioInput = Any  # str | os.PathLike | np.ndarray | torch.Tensor


def load_audio(x: AudioInput, *, sample_rate: int | None = None) -> np.ndarray:
    """Load audio as a float32 mono waveform at 16 kHz.

    Parameters
    ----------
    x : str, os.PathLike, numpy.ndarray or torch.Tensor
        A file path, or samples. Arrays are 1-D (mono) or 2-D; for 2-D the shorter axis is the
        channel axis, so both ``(channels, samples)`` and ``(samples, channels)`` work. Integer PCM
        (int8, int16, int32, or uint8 centred on 128) is scaled to [-1, 1); floats are kept as is.
    sample_rate : int, optional
        The rate of an array input: required for arrays (pass ``sample_rate=16000`` for audio that is
        already at 16 kHz; no rate is ever assumed). For a file it may be omitted; if given it must
        equal the rate in the file's header.

    Returns
    -------
    numpy.ndarray
        float32, 1-D, 16 kHz.

    Raises
    ------
    ModelFileNotFoundError
        The path does not exist.
    InputError
        Unreadable file, missing or bad sample rate, empty audio, NaN or infinite samples,
        unsupported dtype or shape.

    Examples
    --------
    >>> load_audio(np.zeros((2, 44100), np.int16), sample_rate=44100).shape
    (16000,)
    """
    if sample_rate is not None and (not isinstance(sample_rate, int) or sample_rate <= 0):
        raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if isinstance(x, (str, os.PathLike)):
        path = os.fspath(x)
        samples, rate = _read_file(path)
        if sample_rate is not None and sample_rate != rate:
            raise InputError(
                f"{path!r} is sampled at {rate} Hz but sample_rate={sample_rate} was given; "
                "omit sample_rate for files (the header carries it)"
            )
        what = f"audio file {path!r}"
    else:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise InputError(
                f"cannot read audio from {type(x).__name__}; expected a file path or a numpy array"
            )
        if sample_rate is None:
            raise InputError(
                "an audio array needs its sample rate: pass load_audio(array, sample_rate=SR) "
                "(sample_rate=16000 if it is already at Whisper's rate)"
            )
        samples, rate, what = _to_mono(x), sample_rate, "audio array"
    return _finish(samples, rate, what)


def _to_mono(arr: np.ndarray) -> np.ndarray:
    """1-D or 2-D (either layout) samples of any supported dtype -> float32 mono."""
    if arr.ndim == 2 and arr.size == 0:
        raise InputError(f"audio array of shape {arr.shape} is empty; pass at least one sample")
    if arr.ndim == 2:
        axis = 0 if arr.shape[0] <= arr.shape[1] else 1
        if arr.shape[axis] > MAX_CHANNELS:
            raise InputError(
                f"audio array of shape {arr.shape} has {arr.shape[axis]} channels on its shorter "
                f"axis (at most {MAX_CHANNELS} supported); pass one 1-D array per clip"
            )
        return _to_float(arr).mean(axis=axis, dtype=np.float64).astype(np.float32)
    if arr.ndim != 1:
        raise InputError(
            f"audio array has shape {arr.shape}; expected 1-D (samples) or 2-D "
            "(channels, samples) / (samples, channels)"
        )
    return _to_float(arr)


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in _INT_SCALE:
        return (arr.astype(np.float64) / _INT_SCALE[arr.dtype]).astype(np.float32)
    if arr.dtype == np.uint8:  # 8-bit WAV convention: unsigned, centred on 128
        return ((arr.astype(np.float64) - 128.0) / 128.0).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise InputError(
        f"audio array of dtype {arr.dtype} is not supported; expected float (range [-1, 1]) "
        "or integer PCM (int8, int16, int32, uint8)"
    )


def _finish(samples: np.ndarray, rate: int, what: str) -> np.ndarray:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(
            f"{what} has a sample rate of {rate} Hz; expected {MIN_SAMPLE_RATE:,} to "
            f"{MAX_SAMPLE_RATE:,} Hz (speech is usually 16000, music 44100 or 48000)"
        )
    if samples.size == 0:
        raise InputError(f"{what} is empty (0 samples); pass at least one sample of audio")
    if not np.isfinite(samples).all():
        raise InputError(f"{what} contains NaN or infinite samples; clean it before encoding")
    return resample(samples, rate, SAMPLE_RATE)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample 1-D float32 audio with soxr HQ to ``ceil(n * target / orig)`` samples.

    Identical to ``librosa.resample(samples, orig_sr=..., target_sr=...)`` (``res_type="soxr_hq"``).
    """
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    import soxr

    n_out = int(np.ceil(samples.shape[0] * float(target_sr) / orig_sr))
    out = soxr.resample(samples, orig_sr, target_sr, quality="HQ")
    if out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]))
    return np.ascontiguousarray(out[:n_out], dtype=np.float32)


def _read_file(path: str) -> tuple[np.ndarray, int]:
    """Decode a file to (float32 mono samples, sample rate)."""
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"audio file not found: {path!r}; check the path")
    if os.path.isdir(path):
        raise InputError(f"{path!r} is a directory; pass the path of an audio file")
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return _read_with_av(path)
    return data.mean(axis=1, dtype=np.float64).astype(np.float32), int(rate)


def _read_with_av(path: str) -> tuple[np.ndarray, int]:
    """Formats libsndfile does not read (m4a, aac, opus-in-webm, video files ...) via PyAV."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise InputError(f"{path!r} has no audio stream")
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")  # planar float, layout and rate kept
            chunks, rate = [], stream.rate
            for frame in container.decode(stream):
                for out in to_float.resample(frame):
                    chunks.append(out.to_ndarray())  # (channels, samples)
                    rate = out.sample_rate
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"cannot decode audio file {path!r}: {e}") from e
    if not chunks or not rate:
        raise InputError(f"audio file {path!r} decoded to no samples; is it empty?")
    data = np.concatenate(chunks, axis=1)
    return data.mean(axis=0, dtype=np.float64).astype(np.float32), int(rate)


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = freqs / f_sp
    log_part = freqs >= min_log_hz
    mels[log_part] = min_log_mel + np.log(freqs[log_part] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freqs = f_sp * mels
    log_part = mels >= min_log_mel
    freqs[log_part] = min_log_hz * np.exp(logstep * (mels[log_part] - min_log_mel))
    return freqs


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int, *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised mel filter bank ``(n_mels, 1 + n_fft // 2)``, float32.

    Equal to ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)``, the bank Whisper ships.
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = np.array([0.0, sample_rate / 2.0])
    mel_lo, mel_hi = _hz_to_mel(edges)
    mel_f = _mel_to_hz(np.linspace(mel_lo, mel_hi, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=8)
def _torch_filters(n_mels: int, sample_rate: int, n_fft: int) -> torch.Tensor:
    return torch.from_numpy(mel_filters(n_mels, sample_rate=sample_rate, n_fft=n_fft).copy())


def _pad_or_trim(audio: np.ndarray | torch.Tensor, n_samples: int) -> torch.Tensor:
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32) if isinstance(audio, np.ndarray)
                           else audio.detach().to("cpu", torch.float32))  # fmt: skip
    if wave.ndim != 1:
        raise InputError(
            f"log_mel takes a 1-D 16 kHz mono waveform, got shape {tuple(wave.shape)}; "
            "use load_audio(x, sample_rate=SR) first"
        )
    if wave.shape[0] == 0:
        raise InputError("audio is empty (0 samples); pass at least one sample of audio")
    if wave.shape[0] >= n_samples:
        return wave[:n_samples]
    return torch.nn.functional.pad(wave, (0, n_samples - wave.shape[0]))


def split_windows(wave: np.ndarray, n_samples: int = N_SAMPLES) -> list[np.ndarray]:
    """Consecutive windows of ``n_samples`` (the last one shorter) covering a 1-D ``wave``."""
    return [wave[i : i + n_samples] for i in range(0, len(wave), n_samples)]


def log_mel_batch(
    audios: Sequence[np.ndarray | torch.Tensor],
    *,
    n_mels: int = 80,
    n_samples: int = N_SAMPLES,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Whisper log-mel features of several 16 kHz mono waveforms.

    Parameters
    ----------
    audios : sequence of 1-D arrays or tensors
        Waveforms at 16 kHz (see `load_audio`); each is zero-padded or trimmed to ``n_samples``.
    n_mels : int
        Mel bins (80 for Whisper up to large-v2, 128 for large-v3).
    n_samples : int
        Window length in samples (480000 = 30 s).
    n_fft, hop_length, sample_rate : int
        STFT window and hop, and the rate the mel bank is laid out for (Whisper: 400, 160,
        16000; a model passes its config's values).

    Returns
    -------
    torch.Tensor
        float32 ``(N, n_mels, n_samples // hop_length)``. Each clip is floored at its own
        maximum - 8.
    """
    for name, value in dict(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length).items():
        if not isinstance(value, int) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(n_samples, int) or n_samples < n_fft:
        raise InputError(f"n_samples must be an integer >= n_fft={n_fft}, got {n_samples!r}")
    if len(audios) == 0:
        raise InputError("no audio given; pass at least one waveform")
    waves = torch.stack([_pad_or_trim(a, n_samples) for a in audios])  # (N, n_samples)
    if not torch.isfinite(waves).all():
        raise InputError("audio contains NaN or infinite samples; clean it before encoding")
    window = torch.hann_window(n_fft)
    stft = torch.stft(waves, n_fft, hop_length, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # (N, n_fft/2 + 1, frames)
    mel = _torch_filters(n_mels, sample_rate, n_fft) @ power  # (N, n_mels, frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def log_mel(
    audio: np.ndarray | torch.Tensor, *, n_mels: int = 80, n_samples: int = N_SAMPLES
) -> torch.Tensor:
    """Whisper log-mel features ``(n_mels, n_samples // 160)`` of one 16 kHz mono waveform.

    Examples
    --------
    >>> log_mel(np.zeros(16000, np.float32)).shape
    torch.Size([80, 3000])
    """
    return log_mel_batch([audio], n_mels=n_mels, n_samples=n_samples)[0]
