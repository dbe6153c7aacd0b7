"""The one embedding path per modality: preprocess, batch (``embed_in_batches``), encode, normalise.

A model only takes tensors and returns unnormalised features; the method it offers for a
modality is named after it, for every family whose registry entry lists that modality:

- text: ``model.encode_text(ids (B, T), mask (B, T))``, with ``model.text_context`` (most
  tokens, special tokens included), ``model.empty_text_ok`` and ``model.normalizes`` (the file
  ends in its own L2 normalisation, as sentence-transformers' ``Normalize``);
- image: ``model.encode_image(pixels (B, 3, S, S))``, pixels made by the family's own
  ``image_pixels`` (CLIP's bicubic crop, ImageNet's bilinear resize-and-crop);
- audio: ``model.encode_audio(mel (B, n_mels, 3000), frames (B,))`` with the config's log-mel
  settings (``n_mels``, ``n_samples``, ``n_fft``, ``hop_length``, ``sample_rate``) and
  ``model.samples_per_frame``.

Everything else happens here, once: tokenizing, decoding, resizing, resampling, log-mel,
batching (texts sorted by token count across the whole call, then restored to input order),
progress, ``on_error`` and the L2 normalisation.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import InputError
from .batching import OnError, embed_in_batches
from .inputs import check_waveform
from .protocol import EmbeddingResult


def _feed(model: Any) -> Any:
    """Array -> what ``model`` takes: numpy for the ONNX Runtime backend (``onnxrt.OrtModel``,
    no torch imported), else a torch tensor on the model's device."""
    if getattr(model, "backend", "torch") == "onnxruntime":
        return lambda x: x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    import torch

    device = next(model.parameters()).device
    return lambda x: torch.as_tensor(x).to(device)


def text_ids(model: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, int64 ``(N, T)``, right-padded, as the model reads them.

    Special tokens are added by the file's tokenizer; a text longer than ``model.text_context``
    is truncated keeping its closing special token ([SEP], end-of-text) last.
    """
    if model.tokenizer is None:
        raise InputError("this model has no tokenizer; load it with llm_compression.load_model")
    if not model.empty_text_ok:
        for i, text in enumerate(texts):
            if not text.strip():
                raise InputError(
                    f"input {i}: the text is empty; {model.config.family.upper()} needs at least "
                    "one token of text"
                )
    return model.tokenizer.encode_batch(texts, max_length=model.text_context)


def embed_texts(
    model: Any,
    texts: list[str],
    *,
    batch_size: int = 32,
    show_progress: bool = False,
    normalize: bool = True,
    desc: str = "text",
) -> np.ndarray:
    """Texts -> float32 ``(N, dim)`` in input order, batched by token count over the whole call.

    ``normalize=False`` keeps the model's features, unless the file ends in its own normalisation
    (``model.normalizes``, the sentence-transformers ``Normalize`` module).
    """
    ids, mask = text_ids(model, texts) if texts else (np.zeros((0, 0), np.int64),) * 2
    lengths = mask.sum(axis=1)
    feed = _feed(model)

    def encode(rows: list[int]) -> Any:
        width = int(lengths[rows].max())  # right padding: the longest row of the batch
        batch_ids = np.ascontiguousarray(ids[rows, :width])
        batch_mask = np.ascontiguousarray(mask[rows, :width])
        return model.encode_text(feed(batch_ids), feed(batch_mask))

    result = embed_in_batches(
        range(len(texts)), prepare=lambda row: row, embed=encode, dim=model.embedding_dim,
        batch_size=batch_size, show_progress=show_progress, desc=desc,
        length=lambda row: int(lengths[row]), normalize=normalize or model.normalizes,
    )  # fmt: skip
    return result.vectors


def embed_images(
    model: Any,
    images: list[Any],
    *,
    max_pixels: int,
    batch_size: int = 32,
    show_progress: bool = False,
    on_error: OnError = "raise",
    normalize: bool = True,
    desc: str = "images",
) -> EmbeddingResult:
    """Images -> ``EmbeddingResult`` (float32 rows, L2-normalised unless ``normalize=False``)."""
    from ..families import family
    from ..preprocess.image import load_image

    cfg, feed = model.config, _feed(model)
    pixels_of = family(cfg.family).image_pixels

    def encode(pictures: list[Any]) -> Any:
        return model.encode_image(feed(pixels_of(pictures, cfg, max_pixels)))

    return embed_in_batches(
        images, prepare=lambda x: load_image(x, max_pixels=max_pixels), embed=encode,
        dim=model.embedding_dim, batch_size=batch_size, show_progress=show_progress,
        on_error=on_error, desc=desc, normalize=normalize,
    )  # fmt: skip


def embed_audio(
    model: Any,
    clips: list[Any],
    *,
    sample_rate: int | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    on_error: OnError = "raise",
    normalize: bool = True,
) -> EmbeddingResult:
    """Audio clips -> ``EmbeddingResult``: per clip, the mean encoder state over its audio frames.

    A clip longer than one window (30 s) is cut into consecutive windows; its vector is the mean
    of the window means weighted by their audio frames (every second weighs the same).
    ``batch_size`` clips go to the model together (all windows of those clips in one call).
    """
    from ..preprocess.audio import load_audio, log_mel_batch, split_windows

    cfg = model.config

    def prepare(x: Any) -> np.ndarray:
        rate = None if isinstance(x, str | os.PathLike) else sample_rate  # files carry theirs
        return check_waveform(load_audio(x, sample_rate=rate))

    def encode(waves: list[np.ndarray]) -> np.ndarray:
        windows = [
            (i, w) for i, wave in enumerate(waves) for w in split_windows(wave, cfg.n_samples)
        ]
        frames = [max(1, math.ceil(len(w) / model.samples_per_frame)) for _, w in windows]
        mel = log_mel_batch(
            [w for _, w in windows], n_mels=cfg.n_mels, n_samples=cfg.n_samples, n_fft=cfg.n_fft,
            hop_length=cfg.hop_length, sample_rate=cfg.sample_rate,
        )  # fmt: skip
        feed = _feed(model)
        means = np.asarray(_numpy(model.encode_audio(feed(mel), feed(np.asarray(frames)))))
        means = means.astype(np.float64)  # (W, C)
        owner = np.array([i for i, _ in windows])
        weights = np.asarray(frames, np.float64)[:, None]
        sums = np.zeros((len(waves), means.shape[1]))
        np.add.at(sums, owner, means * weights)
        return sums / np.bincount(owner, weights=weights[:, 0])[:, None]

    return embed_in_batches(
        clips, prepare=prepare, embed=encode, dim=model.embedding_dim, batch_size=batch_size,
        show_progress=show_progress, on_error=on_error, desc="audio", normalize=normalize,
    )  # fmt: skip


def _numpy(x: Any) -> Any:
    """A model output as numpy (a torch tensor is detached and moved to the CPU)."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
