"""Token generation for causal LMs: the KV-cached decode loop, sampling and incremental detokenising.

Sampling follows HuggingFace's order of logits warpers: temperature, then top-k, then top-p.
``temperature == 0`` is greedy (argmax). A seed makes sampling reproducible (a private
``torch.Generator``; the global RNG is untouched).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding options, validated once per call."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not _is_number(self.temperature) or not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        seed = self.seed
        if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
            raise InputError(f"seed must be an integer in [0, 2**64) or None, got {seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def generator(self, device) -> torch.Generator | None:
        if self.greedy or self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def sample(logits: torch.Tensor, opts: SamplingConfig, generator=None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if opts.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / opts.temperature
    if opts.top_k is not None and opts.top_k < logits.shape[-1]:
        kth = torch.topk(logits, opts.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p is not None and opts.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= 1 - opts.top_p  # the low tail holding at most 1 - top_p of the mass
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged). Models whose
    matmuls run on ONNX Runtime set ``torch_threads = 1``: torch's OpenMP workers spin after each
    small op and starve ORT's (SmolLM2 int4: 1.6 tokens/s with 2 torch threads, 18 with 1)."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decode_loop(
    model, ids: Sequence[int], opts: SamplingConfig, eos_ids: Iterable[int]
) -> Iterator[int]:
    """Yield new token ids: one prefill over ``ids``, then one cached step per token.

    Stops after ``opts.max_new_tokens`` tokens or at an end-of-sequence id (which is not yielded).
    ``model`` is a ``CausalLM``; its context length bounds prompt + new tokens.
    """
    eos = set(eos_ids)
    n_new = min(opts.max_new_tokens, model.context_length - len(ids))
    device = next(model.parameters(), torch.empty(0)).device
    cache = model.new_cache(1, len(ids) + n_new)
    generator = opts.generator(device)
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, T)
    pos = 0
    for _ in range(n_new):
        with torch_threads(getattr(model, "torch_threads", None)):
            logits = model.logits(x, cache=cache, start_pos=pos, last_only=True)[:, -1]  # (1, V)
        pos += x.shape[1]
        token = sample(logits, opts, generator)  # (1,)
        value = int(token)
        if value in eos:
            return
        yield value
        x = token.view(1, 1)


class TextStreamer:
    """Turn generated token ids into text pieces, holding back what is not final yet.

    A piece is released only when it is complete: the decoded text does not end in an unfinished
    multi-byte character (U+FFFD) and no suffix of it could still grow into a stop string. When a
    stop string appears the text is cut before it and ``stopped`` becomes True.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already released
        self.stopped = False

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def push(self, token: int) -> str:
        """Add a token; return the text that became final (may be empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            cut = text.find(s, max(0, self.emitted - len(s) + 1))
            if cut >= 0:
                text, self.stopped = text[:cut], True
        if self.stopped:
            return self._release(text, len(text))
        if text.endswith("\ufffd"):
            return ""
        return self._release(text, len(text) - self._holdback(text))

    def flush(self) -> str:
        """The text still held back once generation has ended."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return "" if self.stopped else self._release(text, len(text))

    def _release(self, text: str, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted : end], end
        return piece
