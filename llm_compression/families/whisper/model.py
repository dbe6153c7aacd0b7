"""Whisper on the shared core: conv stem + encoder, decoder with cross-attention, greedy decoding.

- ``encode(mel)``: log-mel ``(B, n_mels, 3000)`` -> encoder states ``(B, 1500, dim)``.
- ``encode_audio(mel, frames)``: the mean of the encoder states over the frames that hold audio
  (an encoder frame is 20 ms = 320 samples: ``ceil(n / 320)`` frames, at least 1). The provider
  cuts audio longer than 30 s into 30 s windows and averages the windows weighted by their audio
  frames (so every second of audio weighs the same), then L2-normalises.
- ``transcribe(audio)``: greedy decoding like transformers' ``generate`` (see
  ``whisper_decoding``). Audio longer than 30 s is transcribed as consecutive 30 s windows (the
  language detected on the first window is kept), and the window texts are joined with a space;
  words cut at a window boundary may be garbled (no overlap, no timestamp-based seeking).

Example
-------
>>> model = load_model("whisper-base.parquet")                               # doctest: +SKIP
>>> model.transcribe("speech.wav")                                           # doctest: +SKIP
'Hello world.'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core import Transformer
from ...core.mlp import embedding
from ...errors import InputError
from ...preprocess.audio import load_audio, log_mel_batch, split_windows
from ..methods import FamilyMethods
from . import decoding as wd
from .config import WhisperConfig


def _conv1d(n_in: int, n_out: int, stride: int) -> nn.Conv1d:
    conv = nn.Conv1d(n_in, n_out, 3, stride=stride, padding=1, device="meta")
    conv.weight = nn.Parameter(torch.empty(n_out, n_in, 3))
    conv.bias = nn.Parameter(torch.empty(n_out))
    return conv


class AudioEncoder(Transformer):
    """conv1 (k3) + gelu, conv2 (k3, stride 2) + gelu, + ``pos_embed``, then the body."""

    def __init__(self, config: WhisperConfig) -> None:
        cfg = config.encoder
        super().__init__(cfg)
        self.conv1 = _conv1d(config.n_mels, cfg.dim, 1)
        self.conv2 = _conv1d(cfg.dim, cfg.dim, 2)
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, n_mels, 3000) -> (B, 1500, C)
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, 1500, C)
        return super().forward(x + self.pos_embed)


class TextDecoder(Transformer):
    """Token + learned position embeddings, the body with cross-attention, tied output."""

    def __init__(self, config: WhisperConfig) -> None:
        cfg = config.decoder
        super().__init__(cfg)
        self.token_embed = embedding(config.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))

    def forward(self, ids: torch.Tensor, *, memory: torch.Tensor, cache=None, start_pos: int = 0):
        """Logits (B, T, vocab) for ``ids`` (B, T) at positions ``start_pos ..``."""
        T = ids.shape[1]
        x = self.token_embed(ids) + self.pos_embed[start_pos : start_pos + T]
        h = super().forward(x, cache=cache, start_pos=start_pos, memory=memory)
        return h @ self.token_embed.weight.T


class Whisper(FamilyMethods, nn.Module):
    """Whisper speech model (canonical names ``encoder.*`` and ``decoder.*``, docs/naming.md)."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config)
        self.decoder = TextDecoder(config)
        self.tokenizer = None  # attached by load_model

    @property
    def embedding_dim(self) -> int:
        return self.config.encoder.dim

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per encoder frame: two mel hops (conv2 has stride 2), 320 = 20 ms."""
        return 2 * self.config.hop_length

    normalizes = False  # the provider L2-normalises the pooled vector (once)

    def _param(self) -> torch.Tensor:
        return self.encoder.conv1.weight

    # --- audio -> features ---------------------------------------------------------------------

    def _load(self, audio: Any, sample_rate: int) -> np.ndarray:
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            return load_audio(audio, sample_rate=sample_rate)
        return load_audio(audio)

    def _windows(self, wave: np.ndarray) -> list[np.ndarray]:
        return split_windows(wave, self.config.n_samples)

    @torch.inference_mode()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder states ``(B, 1500, dim)`` of log-mel features ``(B, n_mels, 3000)``."""
        expected = (self.config.n_mels, self.config.n_frames)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != expected:
            raise InputError(
                f"mel features must have shape (B, {expected[0]}, {expected[1]}), got "
                f"{tuple(mel.shape)}; compute them with preprocess.audio.log_mel_batch"
            )
        p = self._param()
        return self.encoder(mel.to(p.device, p.dtype))

    def _mel(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        cfg = self.config
        return log_mel_batch(
            list(windows), n_mels=cfg.n_mels, n_samples=cfg.n_samples, n_fft=cfg.n_fft,
            hop_length=cfg.hop_length, sample_rate=cfg.sample_rate,
        )  # fmt: skip

    @torch.inference_mode()
    def encode_audio(self, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Mean encoder state (B, dim), float32, over the first ``frames[b]`` frames of each window.

        ``mel`` (B, n_mels, 3000) as ``encode`` takes; ``frames`` (B,) how many of the 1500 encoder
        frames hold audio (``ceil(samples / samples_per_frame)``, at least 1). Unnormalised: the
        provider pools the windows of a long clip and L2-normalises once.
        """
        states = self.encode(mel)  # (B, 1500, C)
        frames = torch.as_tensor(frames, device=states.device).reshape(-1)
        if frames.shape[0] != states.shape[0] or bool((frames < 1).any()):
            raise InputError(
                f"frames must hold one count >= 1 per window ({states.shape[0]}), got "
                f"{frames.tolist()}; count ceil(samples / {self.samples_per_frame}) per window"
            )
        keep = torch.arange(states.shape[1], device=states.device) < frames[:, None]  # (B, 1500)
        total = (states * keep[..., None]).sum(dim=1, dtype=torch.float64)  # (B, C)
        return (total / keep.sum(dim=1, keepdim=True)).float()  # float32 whatever the dtype

    # --- decoding ------------------------------------------------------------------------------

    def _special(self) -> wd.SpecialTokens:
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; load it with llm_compression.load_model")
        return wd.special_tokens(self.tokenizer, multilingual=self.config.multilingual)

    @torch.inference_mode()
    def transcribe(
        self,
        audio: Any,
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        max_new_tokens: int | None = None,
        sample_rate: int = 16000,
    ) -> str:
        """Transcribe (or translate to English) speech with greedy decoding.

        Parameters
        ----------
        audio : file path, or samples at ``sample_rate`` (1-D, or 2-D with channels)
        language : language code such as ``"en"``; None detects it from the first 30 s window
        task : ``"transcribe"`` or ``"translate"`` (multilingual models only)
        timestamps : return ``[start -> end] text`` lines instead of plain text
        max_new_tokens : per 30 s window; default fills the decoder's 448 positions
        sample_rate : rate of array inputs (16000 by default); files carry their own

        Returns
        -------
        str : the text, stripped; windows of long audio joined by a space (by newlines with
        timestamps).
        """
        st = self._special()
        lang = None if language is None else wd.language_token(st, language)
        rest = wd.task_tokens(st, task, timestamps)
        texts = []
        for index, window in enumerate(self._windows(self._load(audio, sample_rate))):
            memory = self.encode(self._mel([window]))  # (1, 1500, C)
            tokens, lang = self._decode_window(memory, st, lang, rest, timestamps, max_new_tokens)
            if timestamps:
                offset = index * self.config.chunk_seconds
                texts.append(wd.segments_text(self.tokenizer, tokens, st, offset))
            else:
                texts.append(self.tokenizer.decode(tokens).strip())
        return ("\n" if timestamps else " ").join(t for t in texts if t)

    def _decode_window(self, memory, st, lang, rest, timestamps, max_new_tokens):
        """Greedy tokens (prompt excluded, eot dropped) for one window; returns (tokens, lang)."""
        dec = self.decoder
        cache = dec.new_cache(1, dec.cfg.max_positions)
        device = memory.device
        logits = dec(torch.tensor([[st.sot]], device=device), memory=memory, cache=cache)[0, -1]
        if st.languages and lang is None:
            lang = wd.detect_language(logits.float(), st)
        prompt = ([lang] if st.languages else []) + rest
        pos = 1
        if prompt:
            ids = torch.tensor([prompt], device=device)
            logits = dec(ids, memory=memory, cache=cache, start_pos=pos)[0, -1]
            pos += len(prompt)
        limit = dec.cfg.max_positions - pos
        if max_new_tokens is not None:
            if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise InputError(
                    f"max_new_tokens must be a positive integer, got {max_new_tokens!r}"
                )
            limit = min(limit, max_new_tokens)
        suppress = torch.tensor(self.config.suppress_tokens, dtype=torch.long, device=device)
        begin = torch.tensor(self.config.begin_suppress_tokens, dtype=torch.long, device=device)
        out: list[int] = []
        for step in range(limit):
            scores = logits.float().clone()
            scores[suppress] = -torch.inf
            if step == 0:
                scores[begin] = -torch.inf
            if timestamps:
                wd.apply_timestamp_rules(scores, out, st, first_step=step == 0)
            token = int(scores.argmax())
            if token == st.eot:
                break
            out.append(token)
            if step + 1 < limit:
                ids = torch.tensor([[token]], device=device)
                logits = dec(ids, memory=memory, cache=cache, start_pos=pos)[0, -1]
                pos += 1
        return out, lang
