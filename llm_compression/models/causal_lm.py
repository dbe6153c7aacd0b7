"""Decoder-only language models (OLMo-1, OLMo-2, Llama-family such as SmolLM2) on the shared core.

The body is ``core.Transformer``; this module adds the token embedding, the LM head (tied to the
embedding when ``tie_embeddings``) and text generation.

Example
-------
>>> model = load_model("smollm2.parquet")                                      # doctest: +SKIP
>>> model.generate("The capital of France is", max_new_tokens=8)               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CausalLMConfig
from ..core import KVCache, Transformer
from ..core.mlp import linear
from ..errors import InputError
from .family_hint import FamilyMethods
from .generation import SamplingConfig, TextStreamer, decode_loop


def embedding(n: int, dim: int) -> nn.Embedding:
    """An ``nn.Embedding`` with an uninitialised weight (it is always loaded)."""
    layer = nn.Embedding(n, dim, device="meta")
    layer.weight = nn.Parameter(torch.empty(n, dim))
    return layer


class CausalLM(FamilyMethods, Transformer):
    """Token embedding -> transformer body -> LM head.

    Attributes
    ----------
    config : CausalLMConfig
    tokenizer : preprocess.text.Tokenizer, attached by ``load_model`` (needed for text in/out).
    """

    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__(config.body)
        self.config = config
        self.token_embed = embedding(config.vocab_size, config.body.dim)
        if not config.tie_embeddings:
            self.lm_head = linear(config.body.dim, config.vocab_size, False)
        self.tokenizer = None

    @property
    def context_length(self) -> int:
        return self.config.body.max_positions

    def logits(
        self,
        ids: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V) for token ids (B, T); (B, 1, V) with ``last_only``.

        ``mask`` (B, T) or (B, 1, 1, S): True for real tokens (padding masked out of attention).
        """
        if mask is not None and mask.dim() == 2:
            mask = mask.bool()[:, None, None, :]
        h = super().forward(self.token_embed(ids), mask=mask, cache=cache, start_pos=start_pos)
        if last_only:
            h = h[:, -1:]
        weight = self.token_embed.weight if self.config.tie_embeddings else self.lm_head.weight
        return F.linear(h, weight)

    forward = logits

    # -- text generation -------------------------------------------------------------------------

    def _tokenizer(self):
        if self.tokenizer is None:
            raise InputError(
                "this model has no tokenizer attached; load it with llm_compression.load_model "
                "or call generate_ids with token ids"
            )
        return self.tokenizer

    def _prompt_ids(self, prompt, chat: bool) -> list[int]:
        tok = self._tokenizer()
        if isinstance(prompt, str):
            if not prompt and not chat:
                raise InputError("the prompt is empty; pass at least one character of text")
            messages = [{"role": "user", "content": prompt}]
        elif chat and isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            messages = prompt
        else:
            raise InputError(
                f"prompt must be a str (or a list of chat messages with chat=True), "
                f"got {type(prompt).__name__}"
            )
        if chat:
            text = tok.apply_chat_template(messages, add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False))
        return list(tok.encode(prompt, add_special_tokens=True))

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise InputError("the prompt encodes to no tokens; pass a non-empty prompt")
        if len(ids) >= self.context_length:
            raise InputError(
                f"the prompt has {len(ids)} tokens but the model's context is {self.context_length}; "
                f"shorten it to at most {self.context_length - 1} tokens"
            )
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise InputError(
                f"token ids {bad[:5]} are outside the vocabulary [0, {self.config.vocab_size})"
            )
        return ids

    def _eos_ids(self) -> set[int]:
        """End-of-sequence ids: the config's (as HF generate uses), else the tokenizer's."""
        eos = set(self.config.eos_token_ids)
        if not eos and self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        return eos

    @torch.inference_mode()
    def generate_ids(
        self,
        ids: Sequence[int],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """New token ids after ``ids`` (end-of-sequence not included).

        Generation stops at an end-of-sequence id, after ``max_new_tokens`` or at the context
        length, whichever comes first.
        """
        opts = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed)
        return list(decode_loop(self, self._check_ids(ids), opts, self._eos_ids()))

    def stream(
        self,
        prompt,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        chat: bool = False,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the generated text in pieces as they decode; ``"".join`` equals ``generate``.

        Only complete text is yielded (no half multi-byte characters); output ends before the
        first stop string, which is not included.
        """
        opts = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed)
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        if not all(isinstance(s, str) for s in stops):
            raise InputError(f"stop must be a str or a list of str, got {stop!r}")
        ids = self._check_ids(self._prompt_ids(prompt, chat))
        return self._pieces(ids, opts, TextStreamer(self.tokenizer, stops))

    def _pieces(
        self, ids: list[int], opts: SamplingConfig, streamer: TextStreamer
    ) -> Iterator[str]:
        with torch.inference_mode():
            for token in decode_loop(self, ids, opts, self._eos_ids()):
                piece = streamer.push(token)
                if piece:
                    yield piece
                if streamer.stopped:
                    return
        tail = streamer.flush()
        if tail:
            yield tail

    def generate(self, prompt, **options) -> str:
        """Generate text after ``prompt``; keyword options as for ``stream``.

        Parameters
        ----------
        prompt : str, or a list of ``{"role", "content"}`` messages with ``chat=True``.
        max_new_tokens : int, default 64
        temperature : float, default 0.0 (greedy)
        top_k, top_p : optional sampling filters (applied after temperature, as in HF).
        stop : str or list of str; the text ends before the first one.
        chat : apply the tokenizer's chat template to a user message (error if it has none).
        seed : makes sampling reproducible.
        """
        return "".join(self.stream(prompt, **options))
