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
    min_new_tokens: int = 0  # end-of-sequence suppressed before this many new tokens (HF's)

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        least = self.min_new_tokens
        if not _is_int(least) or not 0 <= least <= self.max_new_tokens:
            raise InputError(
                f"min_new_tokens must be an integer in 0 .. max_new_tokens "
                f"({self.max_new_tokens}), got {least!r}"
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


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The index of the largest logit along the last axis (the first of equal ones, as torch's
    ``argmax``), by numpy on the CPU: torch's CPU argmax took ~10x as long here (49,152 logits:
    194 vs 19 us a row; 8 rows 1,423 vs 82 us)."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    return torch.from_numpy(np.asarray(logits.detach().float().numpy().argmax(axis=-1)))


def sample(logits: torch.Tensor, opts: SamplingConfig, generator=None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if opts.greedy:
        return greedy(logits)
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
    for step in decode_batch(model, [ids], opts, eos_ids):
        yield from step.values()


def left_pad(rows: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (B, T) with the shorter rows padded on the left, and the mask (B, T) of real
    tokens (None when every row has the same length: nothing is padded)."""
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, longest - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, longest - len(r) :] = True
    padded = any(len(r) < longest for r in rows)
    return ids.to(device), mask.to(device) if padded else None


def decode_batch(
    model,
    rows: Sequence[Sequence[int]],
    opts: SamplingConfig,
    eos_ids: Iterable[int],
    ended: set[int] | None = None,
) -> Iterator[dict[int, int]]:
    """Decode several prompts together; yield ``{row: new token}`` per step.

    A row leaves the batch (its KV cache rows dropped) at an end-of-sequence id (not yielded;
    none is chosen before ``opts.min_new_tokens`` new tokens) or when the caller adds its index
    to ``ended`` (a stop string found). The prompts are prefilled
    (``_TorchSteps``: each alone into its cache row, left-padded with a mask after;
    ``_GraphSteps``, the decoder graph (int8 / int4, or float32 on ONNX Runtime): all in one
    right-padded run, each row's own length), then every step runs the matmuls on the whole
    batch while each row attends over its own keys only at its own positions, so a row's
    greedy tokens are those it gets alone. All rows get at most ``opts.max_new_tokens``, bounded by the context length
    less the longest prompt. The generator ends when every row has ended.
    """
    eos, ended = set(eos_ids), ended if ended is not None else set()
    device = next(model.parameters(), torch.empty(0)).device
    longest = max(len(r) for r in rows)
    n_new = min(opts.max_new_tokens, model.context_length - longest)
    threads = getattr(model, "torch_threads", None)
    with torch_threads(threads):
        steps = _steps(model, rows, longest + n_new, device)
    generator = opts.generator(device)
    active = torch.arange(len(rows))  # batch row -> caller's row index
    tokens, banned = None, torch.tensor(sorted(eos), dtype=torch.long, device=device)
    for n in range(n_new):
        with torch_threads(threads):
            logits = steps.first() if tokens is None else steps.next(tokens)  # (B, V)
            if n < opts.min_new_tokens and len(banned):
                logits.index_fill_(-1, banned, float("-inf"))  # a fresh tensor, no gradient
            tokens = sample(logits, opts, generator)  # (B,)
        step = dict(zip(active.tolist(), tokens.tolist(), strict=True))  # caller's row -> token
        yield {r: t for r, t in step.items() if t not in eos}
        keep = [i for i, (r, t) in enumerate(step.items()) if t not in eos and r not in ended]
        if not keep:
            return
        if len(keep) < len(active):
            with torch_threads(threads):
                steps.keep(keep)
            tokens, active = tokens[keep], active[keep]


def _steps(model, rows: Sequence[Sequence[int]], max_len: int, device):
    """What runs the batch: a quantized model's decoder graph, our C kernel over a float32
    model's weights while it still views them (``float32_steps``), else torch."""
    graph = getattr(model, "decoder_graph", None)
    if graph is not None:
        return _GraphSteps(model, graph, rows, max_len, device)
    kernel = getattr(model, "float32_steps", None)
    if kernel is not None and device.type == "cpu" and kernel.views.valid():
        return _Float32Steps(model, kernel, rows, max_len, device)
    return _TorchSteps(model, rows, max_len, device)


KERNEL_PREFILL_ROWS = 64  # _Float32Steps: padded prompt rows the kernel runs in one call


class _TorchSteps:
    """The batch on the torch path: left-padded, a padding mask and per-row rotary positions."""

    def __init__(self, model, rows: Sequence[Sequence[int]], max_len: int, device) -> None:
        self.model, self.rows = model, rows
        self.x, self.mask = left_pad(rows, device)  # (B, T), (B, T) or None
        self.cache = model.new_cache(len(rows), max_len)
        mask = self.mask
        self.positions = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
        self.pos = 0

    def first(self) -> torch.Tensor:
        """Last-position logits (B, V) of the prompts."""
        self.pos = self.x.shape[1]
        if self.mask is not None:
            return _prefill_rows(self.model, self.rows, self.cache)
        return self.model.logits(self.x, cache=self.cache, last_only=True)[:, -1]

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after appending ``tokens`` (B,)."""
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
            self.positions = self.positions[:, -1:] + 1
        logits = self.model.logits(
            tokens.view(-1, 1),
            mask=self.mask,
            cache=self.cache,
            start_pos=self.pos,
            last_only=True,
            positions=self.positions,
        )
        self.pos += 1
        return logits[:, -1]  # fmt: skip

    def keep(self, keep: list[int]) -> None:
        """Only the rows ``keep`` (indices into the current batch) stay."""
        index = torch.tensor(keep, device=self.x.device)
        for layer in self.cache:
            layer.keep(index)
        if self.mask is not None:
            self.mask, self.positions = self.mask[index], self.positions[index]


class _GraphSteps:
    """The batch on a quantized model's decoder graph (``core.decoder_graph``): each row's keys
    at positions ``0 .. length - 1`` of its cache row, its own length telling the graph its
    rotary position and how far it attends."""

    def __init__(self, model, graph, rows: Sequence[Sequence[int]], max_len: int, device) -> None:
        self.model, self.graph, self.rows = model, graph, rows
        self.cache = model.new_cache(len(rows), max_len)
        self.lengths = torch.tensor([len(r) for r in rows])
        self.device = device

    def _logits(self, ids: torch.Tensor, pairs: list, past, lengths=None) -> torch.Tensor:
        embeds = self.model.token_embed(ids)
        return self.graph.run(embeds, pairs, past, last_only=True, lengths=lengths)[:, -1]

    def first(self) -> torch.Tensor:
        """Every prompt in one run, right-padded (each row attends over its own tokens only,
        ``seqlens_k``), each row's keys at 0 .. length - 1 of its cache row: logits (B, V)."""
        longest = int(self.lengths.max())
        ids = torch.zeros(len(self.rows), longest, dtype=torch.long)
        for i, r in enumerate(self.rows):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        pairs = [(layer.k, layer.v) for layer in self.cache]
        past = [0] * len(self.rows)
        return self._logits(ids.to(self.device), pairs, past, self.lengths.tolist())

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        pairs = [(layer.k, layer.v) for layer in self.cache]
        logits = self._logits(tokens.view(-1, 1), pairs, self.lengths.tolist())
        self.lengths += 1
        return logits

    def keep(self, keep: list[int]) -> None:
        index = torch.tensor(keep)
        for layer in self.cache:
            layer.keep(index)
        self.lengths = self.lengths[index]


class _Float32Steps(_GraphSteps):
    """A float32 model's steps on our C kernel (``core.native_decoder.float32_steps``). Prompts
    of up to ``KERNEL_PREFILL_ROWS`` padded rows in all run on the kernel too, in one call (the
    weights streamed once for every row); longer ones are prefilled by torch, each alone into its
    cache row at ``0 .. length - 1``, where MKL's sgemm is faster (SmolLM2, first token after 8 /
    32 / 64 / 256 prompt tokens: kernel 40 / 75 / 133 ms, torch 72 / 98 / 133 / 330 ms;
    decision 0018)."""

    def first(self) -> torch.Tensor:
        if len(self.rows) * max(len(r) for r in self.rows) <= KERNEL_PREFILL_ROWS:
            return super().first()
        return _prefill_rows(self.model, self.rows, self.cache, left_padded=False)


def _prefill_rows(model, rows: Sequence[Sequence[int]], cache, *, left_padded: bool = True):
    """Last-position logits (B, V) of a batch, each prompt run alone (the very computation it
    gets unbatched) and its keys and values copied into its cache row: at the end of the
    longest prompt's span (left-padded), else from position 0."""
    longest = max(len(r) for r in rows)
    out = []
    for i, r in enumerate(rows):
        own = model.new_cache(1, len(r))
        x = torch.tensor([list(r)], dtype=torch.long, device=cache[0].k.device)
        out.append(model.logits(x, cache=own, last_only=True)[:, -1])
        start = longest - len(r) if left_padded else 0
        for layer, mine in zip(cache, own, strict=True):
            layer.k[i, :, start : start + len(r)] = mine.k[0]
            layer.v[i, :, start : start + len(r)] = mine.v[0]
    return torch.cat(out)  # (B, V)


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
