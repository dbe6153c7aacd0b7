"""Decoding one 30 s window: greedy (or sampled) steps, beam search, temperature fallback.

- Greedy is transformers' ``generate`` (the default, for parity). ``beam_size > 1`` is its beam
  search (``num_beams``, length penalty 1.0, ``early_stopping=False``): log-probabilities of the
  raw logits, the logit rules masking them, the 2 x beams best continuations kept per step.
- Temperature fallback is openai-whisper's ``transcribe``: decode at 0.0, and again at the next
  temperature (sampling) while the text is too repetitive (gzip compression ratio of the text
  > 2.4) or too unlikely (mean log-probability < -1.0); a window whose ``<|nocaptions|>``
  probability after ``<|startoftranscript|>`` is > 0.6 and whose text is unlikely is silence.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ...core.generation import greedy
from ...errors import InputError
from . import decoding as wd

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper's transcribe defaults
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6


@dataclass(frozen=True)
class DecodeOptions:
    """How a window is decoded; the default is HF's greedy ``generate`` without fallback."""

    beam_size: int = 1
    temperatures: tuple[float, ...] = (0.0,)
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    max_new_tokens: int | None = None
    seed: int = 0  # of the sampling generator, so a fallback transcript is reproducible

    def __post_init__(self) -> None:
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise InputError(f"beam_size must be a positive integer, got {self.beam_size!r}")
        if not self.temperatures or any(not 0.0 <= t <= 2.0 for t in self.temperatures):
            raise InputError(
                f"temperatures must be values in [0, 2], got {self.temperatures!r}; "
                "e.g. (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)"
            )
        limit = self.max_new_tokens
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InputError(f"max_new_tokens must be a positive integer, got {limit!r}")

    @classmethod
    def make(cls, *, beam_size: int, temperature_fallback: bool, max_new_tokens) -> DecodeOptions:
        if not temperature_fallback:
            return cls(beam_size=beam_size, max_new_tokens=max_new_tokens)
        return cls(
            beam_size=beam_size,
            temperatures=FALLBACK_TEMPERATURES,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            logprob_threshold=LOGPROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            max_new_tokens=max_new_tokens,
        )


@dataclass(frozen=True)
class WindowResult:
    """Tokens of one window (prompt and eot excluded) and the figures fallback decides on."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    is_silence: bool = False


def compression_ratio(text: str) -> float:
    """UTF-8 bytes / zlib-compressed bytes of ``text`` (openai-whisper's repetition measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class WindowDecoder:
    """Decodes one window's encoder states ``memory`` (1, 1500, C) after a prompt."""

    def __init__(self, model, memory, st: wd.SpecialTokens, language: int | None, rest: list[int]):
        self.dec, self.memory, self.st = model.decoder, memory, st
        self.language, self.rest, self.tokenizer = language, rest, model.tokenizer
        self.timestamps = st.no_timestamps not in rest
        device = memory.device
        self.suppress = torch.tensor(model.config.suppress_tokens, dtype=torch.long, device=device)
        self.begin = torch.tensor(
            model.config.begin_suppress_tokens, dtype=torch.long, device=device
        )

    @property
    def prompt(self) -> list[int]:
        """``<|startoftranscript|> [<|lang|>] <|task|> [<|notimestamps|>]``."""
        return [self.st.sot] + ([self.language] if self.st.languages else []) + self.rest

    def prefill(self):
        """(logits after the prompt (V,), the cache, logits after ``<|startoftranscript|>``).

        ``<|startoftranscript|>`` goes first alone: its logits name the language when none was
        given (transformers' ``detect_language``) and the probability of no speech.
        """
        dec, device = self.dec, self.memory.device
        cache = dec.new_cache(1, dec.cfg.max_positions)
        sot = dec(torch.tensor([[self.st.sot]], device=device), memory=self.memory, cache=cache)
        sot_logits = sot[0, -1].float()
        if self.st.languages and self.language is None:
            self.language = wd.detect_language(sot_logits, self.st)
        rest = self.prompt[1:]
        if not rest:  # English-only with timestamps: the prompt is <|startoftranscript|> alone
            return sot[0, -1], cache, sot_logits
        ids = torch.tensor([rest], device=device)
        logits = dec(ids, memory=self.memory, cache=cache, start_pos=1)[0, -1]
        return logits, cache, sot_logits

    def rules(self, scores: torch.Tensor, generated: list[int], step: int) -> torch.Tensor:
        """Suppress tokens (and at step 0 the begin tokens); timestamp rules; in place."""
        scores[self.suppress] = -torch.inf
        if step == 0:
            scores[self.begin] = -torch.inf
        if self.timestamps:
            wd.apply_timestamp_rules(scores, generated, self.st, first_step=step == 0)
        return scores

    def limit(self, options: DecodeOptions) -> int:
        room = self.dec.cfg.max_positions - len(self.prompt)
        return room if options.max_new_tokens is None else min(room, options.max_new_tokens)

    def _step(self, token_ids, cache, pos: int) -> torch.Tensor:
        ids = torch.tensor(token_ids, device=self.memory.device).reshape(len(token_ids), 1)
        return self.dec(ids, memory=self.memory, cache=cache, start_pos=pos)[:, -1]  # (B, V)

    def sample(self, logits, cache, options: DecodeOptions, temperature: float, generator):
        """Greedy (temperature 0) or sampled tokens and their summed log-probability."""
        out: list[int] = []
        total, pos, limit = 0.0, len(self.prompt), self.limit(options)
        for step in range(limit):
            scores = self.rules(logits.float().clone(), out, step)
            if temperature > 0:
                probs = torch.softmax(scores / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(greedy(scores))
            total += float(torch.log_softmax(scores, dim=-1)[token])
            if token == self.st.eot:
                return out, total, len(out) + 1
            out.append(token)
            if step + 1 < limit:
                logits = self._step([token], cache, pos)[0]
                pos += 1
        return out, total, len(out)

    def beam(self, logits, cache, options: DecodeOptions):
        """transformers' beam search (length penalty 1, early_stopping False) for one window."""
        beams = _Beams(self, cache, options.beam_size)
        limit = self.limit(options)
        for step in range(limit):
            logits = beams.advance(logits, step, last=step + 1 == limit)
            if logits is None:
                break
        tokens, score = beams.best()
        return tokens, score

    def result(self, tokens, logprob: float, count: int, no_speech: float, temperature: float):
        text = self.tokenizer.decode([t for t in tokens if t < self.st.eot])
        avg = logprob / max(count, 1)
        return WindowResult(tokens, avg, no_speech, temperature, compression_ratio(text))


class _Beams:
    """The running and finished hypotheses of transformers' beam search (one input)."""

    def __init__(self, window: WindowDecoder, cache, size: int) -> None:
        self.window, self.size, self.pos = window, size, len(window.prompt)
        self.cache = cache
        self.memory = _expand_cache(cache, window.memory, size)
        self.seqs: list[list[int]] = [[] for _ in range(size)]
        device = window.memory.device
        self.scores = torch.full((size,), -1e9, device=device)
        self.scores[0] = 0.0  # all beams start as one: only the first may continue at step 0
        self.finished: list[tuple[float, list[int]]] = []  # (length-normalised score, tokens)
        self.open = True  # transformers' early-stop heuristic: can a running beam still win?

    def advance(self, logits, step: int, last: bool):
        """One step from logits (1 or size, V); the next logits, or None when search ends."""
        window, size = self.window, self.size
        logp = torch.log_softmax(logits.float(), dim=-1).expand(size, -1).clone()  # (K, V)
        for b in range(size):
            window.rules(logp[b], self.seqs[b], step)
        vocab = logp.shape[-1]
        top, index = (logp + self.scores[:, None]).reshape(-1).topk(2 * size)
        origin, tokens = (index // vocab).tolist(), (index % vocab).tolist()
        hits = [last or t == window.st.eot for t in tokens]
        self._finish(top[:size].tolist(), origin, tokens, hits, step + 1)
        keep = (top - 1e9 * torch.tensor(hits, device=top.device)).topk(size).indices.tolist()
        self.scores = top[keep] - 1e9 * torch.tensor([hits[k] for k in keep], device=top.device)
        self.seqs = [self.seqs[origin[k]] + [tokens[k]] for k in keep]
        self._check_open(step + 1)
        if not self.open or all(hits):
            return None
        return self._forward([origin[k] for k in keep], [tokens[k] for k in keep])

    def _finish(self, top, origin, tokens, hits, length: int) -> None:
        if not self.open:
            return
        for j, score in enumerate(top):
            if hits[j]:
                self.finished.append((score / length, self.seqs[origin[j]] + [tokens[j]]))
        self.finished = sorted(self.finished, key=lambda f: -f[0])[: self.size]

    def _check_open(self, length: int) -> None:
        worst = self.finished[-1][0] if len(self.finished) == self.size else -1e9
        self.open = self.open and float(self.scores[0]) / length > worst

    def _forward(self, origin: list[int], tokens: list[int]):
        pos, index = self.pos, torch.tensor(origin, device=self.scores.device)
        for layer in self.cache:
            layer.k[:, :, :pos] = layer.k[index, :, :pos]
            layer.v[:, :, :pos] = layer.v[index, :, :pos]
        self.pos += 1
        return self.window._step(tokens, self.cache, pos)

    def best(self) -> tuple[list[int], float]:
        score, tokens = self.finished[0]
        if tokens and tokens[-1] == self.window.st.eot:
            tokens = tokens[:-1]
        return tokens, score


def _expand_cache(cache, memory: torch.Tensor, size: int) -> torch.Tensor:
    """Repeat a batch-1 prefilled cache ``size`` times (cross K/V as views: they never change)."""
    wide = memory.expand(size, -1, -1)
    for layer in cache:
        layer.k, layer.v = layer.k.repeat(size, 1, 1, 1), layer.v.repeat(size, 1, 1, 1)
        layer.cross = tuple(t.expand(size, -1, -1, -1) for t in layer.cross)
        layer.memory = wide
    return wide


def decode_window(window: WindowDecoder, options: DecodeOptions, generator) -> WindowResult:
    """Decode with fallback to higher temperatures while the result looks wrong (see module)."""
    logits, cache, sot_logits = window.prefill()
    no_speech = float(torch.softmax(sot_logits.float(), dim=-1)[window.st.no_speech])
    result = None
    for temperature in options.temperatures:
        if result is not None:  # a fallback: decode the window again from a fresh prefill
            logits, cache, _ = window.prefill()
        if temperature == 0 and options.beam_size > 1:
            tokens, score = window.beam(logits, cache, options)
            result = window.result(tokens, score, 1, no_speech, 0.0)
        else:
            out, total, count = window.sample(logits, cache, options, temperature, generator)
            result = window.result(out, total, count, no_speech, temperature)
        if not _needs_fallback(result, options):
            break
    return _mark_silence(result, options)


def _needs_fallback(result: WindowResult, options: DecodeOptions) -> bool:
    ratio, logprob = options.compression_ratio_threshold, options.logprob_threshold
    needs = (ratio is not None and result.compression_ratio > ratio) or (
        logprob is not None and result.avg_logprob < logprob
    )
    silent = options.no_speech_threshold is not None and (
        result.no_speech_prob > options.no_speech_threshold
        and logprob is not None
        and result.avg_logprob < logprob
    )
    return needs and not silent


def _mark_silence(result: WindowResult, options: DecodeOptions) -> WindowResult:
    threshold, logprob = options.no_speech_threshold, options.logprob_threshold
    if threshold is None or result.no_speech_prob <= threshold:
        return result
    if logprob is not None and result.avg_logprob > logprob:
        return result
    return WindowResult(
        result.tokens, result.avg_logprob, result.no_speech_prob, result.temperature,
        result.compression_ratio, is_silence=True,
    )  # fmt: skip
