"""Whisper on the shared core: conv stem + encoder, decoder with cross-attention, greedy decoding.

- ``encode(mel)``: log-mel ``(B, n_mels, 3000)`` -> encoder states ``(B, 1500, dim)``.
- ``encode_audio(mel, frames)``: the mean of the encoder states over the frames that hold audio
  (an encoder frame is 20 ms = 320 samples: ``ceil(n / 320)`` frames, at least 1). The provider
  cuts audio longer than 30 s into 30 s windows and averages the windows weighted by their audio
  frames (so every second of audio weighs the same), then L2-normalises.
- ``transcribe(audio)``: greedy decoding like transformers' ``generate`` (``decoding``; beam
  search and temperature fallback in ``search``). Audio longer than 30 s is decoded in windows
  that each start at the end of the last complete timestamped segment (``segments``), as
  transformers' long-form generate does; ``transcribe_segments`` returns those segments.

Example
-------
>>> model = load_model("whisper-base.parquet")                               # doctest: +SKIP
>>> model.transcribe("speech.wav")                                           # doctest: +SKIP
'Hello world.'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core import Transformer
from ...core.compute import tied_head
from ...core.compute_layers import tied_logits
from ...core.mlp import embedding
from ...errors import InputError
from ...preprocess.audio import load_audio, log_mel_batch, split_windows
from ..methods import FamilyMethods
from . import decoding as wd
from .config import WhisperConfig
from .search import DecodeOptions, WindowDecoder, decode_window
from .segments import Segment, Transcript, seconds, seek_windows, split_window


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

    def compute_converted(self, mode: str) -> None:
        """bfloat16: the convolution stem too (conv2 is (1500, 3 * dim) x (3 * dim, dim))."""
        if mode == "bfloat16":
            self.conv1.to(torch.bfloat16)
            self.conv2.to(torch.bfloat16)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, n_mels, 3000) -> (B, 1500, C)
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, 1500, C)
        return super().forward(x + self.pos_embed)


class TextDecoder(Transformer):
    """Token + learned position embeddings, the body with cross-attention, tied output.

    On the CPU in float32 and int8 a decode pass runs in our C kernel where it can
    (``native_steps``, ``core.native_cross``; decision 0018): float32 over views of these plain
    weights (torch runs the pass again if they are replaced or moved), int8 from the kernel's
    copies of the int8 rows (the torch layers it copied are released; the cross-attention's
    keys and values are still projected by torch, once a window)."""

    decodes_steps = True  # int8: its linears see a row per beam a call (core.compute)
    lookup_tables = ("token_embed",)  # int8: int8 rows (core.compute), the head's too

    def __init__(self, config: WhisperConfig) -> None:
        cfg = config.decoder
        super().__init__(cfg)
        self.token_embed = embedding(config.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))
        self.head: nn.Module | None = None  # the tied output projection in a compute mode
        self.native_steps = None  # core.native_cross.CrossDecoder: a pass in our C kernel

    def runs_natively(self, mode: str) -> bool:
        """int8: the layers' linears become int8 rows for our kernel to copy (``core.compute``)."""
        from ...core import native_cross

        return (
            mode == "int8" and self.native_steps is None and native_cross.why_not(self.cfg) is None
        )

    @property
    def keeps_plain_float32(self) -> bool:
        """float32: the kernel views these linear layers, so they are not packed for oneDNN."""
        return self.native_steps is not None and self.native_steps.float32

    def compute_converted(self, mode: str) -> None:
        """The output projection (the token table, tied) computes in ``mode`` too: it is the
        largest matrix of a decode step (51865 x 512 in base); in int8, from the table's int8
        rows (``lookup_tables``: the lookups read them too, not a 106 MB float32 table). Where
        our kernel runs this decoder (float32 on plain rows, int8 on ``Int8Rows``), it takes the
        whole pass."""
        from ...core import native_cross
        from ...core.compute_layers import Int8Rows
        from ...core.native_decoder import WeightViews

        kind = {"float32": nn.Linear, "int8": Int8Rows}.get(mode)
        steps = [m for name, m in self._stepped_layers()]
        if (
            native_cross.why_not(self.cfg) is not None
            or self.native_steps is not None
            or kind is None
            or not all(type(m) is kind for m in steps)
        ):
            self.head = tied_head(self.token_embed, mode)
            return
        self.native_steps = native_cross.CrossDecoder(self, self.token_embed)
        if mode == "float32":
            names = [name for name, _ in self._stepped_layers()] + ["token_embed"]
            self.native_steps.views = WeightViews(self, names)
        else:
            self._release_int8()

    def _stepped_layers(self):
        """(name, layer) of the linear layers a step multiplies by (not the cross-attention's
        keys and values: those project the encoder's output, once a window)."""
        for i, block in enumerate(self.layers):
            attn = block.attn
            parts = {"attn.o": attn.o, "cross_attn.q": block.cross_attn.q,
                     "cross_attn.o": block.cross_attn.o, "mlp.up": block.mlp.up,
                     "mlp.down": block.mlp.down}  # fmt: skip
            if attn.qkv is not None:
                parts["attn.qkv"] = attn.qkv
            else:
                parts.update({"attn.q": attn.q, "attn.k": attn.k, "attn.v": attn.v})
            yield from ((f"layers.{i}.{name}", m) for name, m in parts.items())

    def _release_int8(self) -> None:
        """int8: the kernel holds its own copies; torch keeps the cross-attention's key and value
        projections (packed for its int8 kernels: 1500 rows a window) and the lookups."""
        from ...core.compute_layers import Int8Linear

        for name, _ in list(self._stepped_layers()):
            owner, _, attr = name.rpartition(".")
            setattr(self.get_submodule(owner), attr, None)
        for block in self.layers:
            for attr in ("k", "v"):
                rows = getattr(block.cross_attn, attr)
                setattr(block.cross_attn, attr, Int8Linear.from_rows(rows.weight, rows.bias))

    def _kernel_runs(self, x: torch.Tensor) -> bool:
        """Whether this pass goes to our kernel (float32: while it still views these weights)."""
        steps = self.native_steps
        if steps is None or x.device.type != "cpu":
            return False
        return steps.views is None or steps.views.valid()

    def forward(self, ids: torch.Tensor, *, memory: torch.Tensor, cache=None, start_pos: int = 0):
        """Logits (B, T, vocab) for ``ids`` (B, T) at positions ``start_pos ..``."""
        T = ids.shape[1]
        x = self.token_embed(ids) + self.pos_embed[start_pos : start_pos + T]
        if self._kernel_runs(x):
            return self._kernel_pass(x, memory, cache, start_pos)
        if self.native_steps is not None and not self.native_steps.float32:
            raise InputError(
                "this int8 decoder computes in our C kernel on the CPU (its torch layers were "
                "released); keep its inputs on the CPU"
            )
        h = super().forward(x, cache=cache, start_pos=start_pos, memory=memory)
        if self.head is None:
            return tied_logits(h, self.token_embed.weight)
        return self.head(h).float()

    def _kernel_pass(self, x, memory, cache, start_pos: int) -> torch.Tensor:
        """``forward`` in our kernel; without a cache, one made for this call (attention over
        these tokens alone, as torch's pass without a cache: their positions are in ``x``)."""
        if cache is None:
            cache, start_pos = self.new_cache(x.shape[0], x.shape[1]), 0
        for block, layer in zip(self.layers, cache, strict=True):
            _cross_into(block.cross_attn, layer, memory)
        return self.native_steps.run(x, cache, start_pos)


def _cross_into(attn: nn.Module, layer, memory: torch.Tensor | None) -> None:
    """The encoder's keys and values of one layer, float32 and contiguous, in its cache (made
    once for an encoder output; a beam search's expanded view of it is the same output)."""
    held = layer.memory
    same = held is memory or (held is not None and memory is not None and held._base is memory)
    if (
        layer.cross is not None
        and layer.cross[0].dtype == torch.float32
        and (memory is None or same)
    ):
        return
    if memory is None:
        raise InputError("cross-attention needs the encoder output: pass memory=(B, S, C)")
    k, v = attn.memory_kv(memory)
    layer.cross, layer.memory = (k.float().contiguous(), v.float().contiguous()), memory


def _audio_progress(progress, wave: np.ndarray, cfg: WhisperConfig):
    """``progress`` with the frames done counted in the audio's own frames (not its padding)."""
    if progress is None:
        return None
    frames = max(len(wave) // cfg.hop_length, 1)
    return lambda done, total: progress(min(done, frames), frames)


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

    @staticmethod
    def compute_plan(mode: str) -> dict[str, str]:
        """int8 runs the decoder in int8 and the encoder in bfloat16 (``core.compute``).

        Measured (docs/decisions/0008-encoder-speed.md, "Whisper int8"): torch's int8 linear
        quantizes a whole (1500, C) activation with one scale, which turned "brown fox jumps" into
        "round fox jumped" on the test clip, and on this CPU it runs the encoder slower than
        bfloat16 (1.39x HF against 2.15x); decode steps are one row each and bound by reading the
        weights, where int8's quarter of the bytes pays."""
        return {"encoder": "bfloat16", "decoder": "int8"} if mode == "int8" else {"": mode}

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

    def _mel(self, windows: Sequence[np.ndarray], n_samples: int | None = None) -> torch.Tensor:
        cfg = self.config
        return log_mel_batch(
            list(windows), n_mels=cfg.n_mels, n_samples=n_samples or cfg.n_samples, n_fft=cfg.n_fft,
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
        beam_size: int = 1,
        temperature_fallback: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> str:
        """Transcribe (or translate to English) speech; greedy decoding by default.

        Parameters
        ----------
        audio : file path, or samples at ``sample_rate`` (1-D, or 2-D with channels)
        language : language code such as ``"en"``; None detects it from the first 30 s window
        task : ``"transcribe"`` or ``"translate"`` (multilingual models only)
        timestamps : return ``[start -> end] text`` lines instead of plain text
        max_new_tokens : per 30 s window; default fills the decoder's 448 positions
        sample_rate : rate of array inputs (16000 by default); files carry their own
        beam_size : > 1 for beam search (transformers' ``num_beams``)
        temperature_fallback : decode again at temperatures 0.2 .. 1.0 when the text is
            repetitive or unlikely, and skip silent windows (openai-whisper's ``transcribe``)
        progress : called with (mel frames done, total frames) after each window

        Returns
        -------
        str : the text, stripped. Audio up to 30 s is one window, decoded without timestamps
        unless asked (transformers' short-form ``generate``); longer audio is decoded with
        timestamps window by window (see ``transcribe_segments``).
        """
        options = DecodeOptions.make(
            beam_size=beam_size, temperature_fallback=temperature_fallback,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        wave = self._load(audio, sample_rate)
        if timestamps or len(wave) > self.config.n_samples:
            found = self._segments(wave, language, task, options, progress)
            return found.timestamped() if timestamps else found.text
        st = self._special()
        lang = None if language is None else wd.language_token(st, language)
        memory = self.encode(self._mel([wave]))  # (1, 1500, C)
        window = WindowDecoder(self, memory, st, lang, wd.task_tokens(st, task, False))
        result = decode_window(window, options, self._generator(options))
        if progress is not None:
            progress(*[max(len(wave) // self.config.hop_length, 1)] * 2)
        return "" if result.is_silence else self.tokenizer.decode(result.tokens).strip()

    def transcribe_segments(
        self,
        audio: Any,
        *,
        language: str | None = None,
        task: str = "transcribe",
        max_new_tokens: int | None = None,
        sample_rate: int = 16000,
        beam_size: int = 1,
        temperature_fallback: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Transcript:
        """Timestamped segments (start and end in seconds, text) and the whole text.

        Same parameters as ``transcribe``. Audio longer than 30 s is decoded window by window,
        each window starting where the last complete segment of the one before ended (as
        transformers' long-form ``generate(..., return_timestamps=True)``), so no phrase is cut.
        """
        options = DecodeOptions.make(
            beam_size=beam_size, temperature_fallback=temperature_fallback,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return self._segments(self._load(audio, sample_rate), language, task, options, progress)

    @torch.inference_mode()
    def _segments(self, wave, language, task, options, progress) -> Transcript:
        st, cfg = self._special(), self.config
        state = {"lang": None if language is None else wd.language_token(st, language)}
        rest = wd.task_tokens(st, task, True)
        generator = self._generator(options)
        hop_seconds = cfg.hop_length / cfg.sample_rate

        def decode(window: torch.Tensor, seek: int, frames: int):
            decoder = WindowDecoder(self, self.encode(window), st, state["lang"], rest)
            result = decode_window(decoder, options, generator)
            state["lang"] = decoder.language
            if result.is_silence:
                return [], frames
            found, advance = split_window(result.tokens, st.timestamp_begin, frames)
            return [self._segment(result, seek, part, hop_seconds) for part in found], advance

        # up to 30 s: the audio padded to 30 s (short-form); longer: the whole input's log-mel
        mel = self._mel([wave])[0] if len(wave) <= cfg.n_samples else self._mel_whole(wave)
        found = seek_windows(mel, cfg.n_frames, decode, _audio_progress(progress, wave, cfg))
        text_ids = [t for s in found for t in s.tokens if t < st.eot]
        code = next((c for c, i in st.languages.items() if i == state["lang"]), None)
        return Transcript(self.tokenizer.decode(text_ids).strip(), tuple(found), code,
                          len(wave) / cfg.sample_rate)  # fmt: skip

    def _segment(self, result, seek: int, part, hop_seconds: float) -> Segment:
        start, end, tokens = part
        text = self.tokenizer.decode([t for t in tokens if t < self._special().eot]).strip()
        return Segment(
            seconds(seek, start, hop_seconds), seconds(seek, end, hop_seconds), text,
            tuple(tokens), result.temperature, result.avg_logprob, result.compression_ratio,
            result.no_speech_prob,
        )  # fmt: skip

    def _mel_whole(self, wave: np.ndarray) -> torch.Tensor:
        """Log-mel (n_mels, frames) of the whole input, floored at its own maximum - 8."""
        return self._mel([wave], n_samples=len(wave))[0]

    @staticmethod
    def _generator(options: DecodeOptions) -> torch.Generator:
        return torch.Generator().manual_seed(options.seed)
