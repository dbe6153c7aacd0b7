"""Decoder-only language models (OLMo-1, OLMo-2, Llama-family): config, model and shared converter parts.

The ``olmo`` and ``llama`` families both run this model; their own modules hold what differs
(upstream names, config keys, the GGUF layout).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import TransformerConfig, check_choice, check_positive
from ..core import KVCache, Transformer
from ..core.compute_layers import tied_logits
from ..core.generation import SamplingConfig, TextStreamer, decode_batch
from ..core.mlp import embedding, linear
from ..errors import ConfigError, InputError
from .maps import Target, gated_activation, optional_int, require, rope_theta, token_ids
from .methods import FamilyMethods
from .spec import Family


@dataclass(frozen=True)
class CausalLMConfig:
    """Decoder-only language models: OLMo-1, OLMo-2 and Llama-family (SmolLM2)."""

    body: TransformerConfig
    vocab_size: int
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    family: str = "llama"  # "olmo" or "llama": both run on the same core

    def __post_init__(self) -> None:
        check_choice("CausalLMConfig.family", self.family, ("olmo", "llama"))
        check_positive("CausalLMConfig", vocab_size=self.vocab_size)
        if not self.body.causal:
            raise ConfigError("CausalLMConfig.body must have causal=True")


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
        self.decoder_graph = None  # core.decoder_graph.DecoderGraph of a quantized model
        self.float32_steps = None  # our C kernel over these weights: float32 decode steps

    def compute_converted(self, mode: str) -> None:
        """float32 on the CPU: the decode steps move into our C kernel where it runs this model
        (``core.native_decoder.float32_steps``: it views these weights, so they stay plain
        ``nn.Linear`` rows, not oneDNN's packed copies); ``logits`` stays torch's."""
        super().compute_converted(mode)
        if mode == "float32" and self.decoder_graph is None:
            from ..core import native_decoder

            self.float32_steps = native_decoder.float32_steps(self)

    @property
    def keeps_plain_float32(self) -> bool:
        """Whether ``core.compute`` leaves the float32 linear layers as they are (our kernel
        views them)."""
        return self.float32_steps is not None

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
        prefix_embeds: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V) for token ids (B, T); (B, 1, V) with ``last_only``.

        ``mask`` (B, T) or (B, 1, 1, S): True for real tokens (padding masked out of attention).
        ``prefix_embeds`` (B, P, C): input embeddings (soft prompts) placed before the tokens'
        embeddings; the output then covers P + T positions and ``mask`` must cover them too.
        ``positions`` (B, T): rotary positions per row (left-padded batches; see ``Transformer``).
        """
        if mask is not None and mask.dim() == 2:
            mask = mask.bool()[:, None, None, :]
        x = self.token_embed(ids)  # (B, T, C)
        if prefix_embeds is not None:
            x = torch.cat([prefix_embeds.to(x.dtype), x], dim=1)  # (B, P + T, C)
        if self.decoder_graph is not None:
            return self._graph_logits(x, mask, cache, start_pos, last_only, positions)
        h = super().forward(x, mask=mask, cache=cache, start_pos=start_pos, positions=positions)
        if last_only:
            h = h[:, -1:]
        if not self.config.tie_embeddings:
            return self.lm_head(h)
        if hasattr(self.token_embed, "project"):  # a quantized table (core.quantized)
            return self.token_embed.project(h)
        return tied_logits(h, self.token_embed.weight)

    forward = logits

    def _graph_logits(self, x, mask, cache, start_pos: int, last_only: bool, positions):
        """``logits`` on the decoder graph: every row at the same position ``start_pos``."""
        if mask is not None or positions is not None:
            raise InputError(
                "the decoder graph (dtype int8 / int4, or backend='onnxruntime') runs rows of "
                "equal length (no mask or positions); pass several prompts to generate_ids / "
                "generate, which batch them, or load with backend='torch' (float32) or "
                "load_quantized(path, dtype, graph=False) (int8 / int4)"
            )
        if cache is None:
            cache, start_pos = self.new_cache(x.shape[0], x.shape[1]), 0
        pairs = [(layer.k, layer.v) for layer in cache]
        return self.decoder_graph.run(x, pairs, [start_pos] * x.shape[0], last_only=last_only)

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
                f"got {type(prompt).__name__}; several prompts go to generate([...]) as a list"
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
        ids: Sequence[int] | Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[int] | list[list[int]]:
        """New token ids after ``ids`` (end-of-sequence not included); for a list of id lists,
        one list per prompt, decoded together as a left-padded batch (``generate``).

        Generation stops at an end-of-sequence id (none before ``min_new_tokens`` new tokens, as
        HF's ``min_new_tokens``), after ``max_new_tokens`` or at the context length, whichever
        comes first.
        """
        opts = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed, min_new_tokens)
        batch = len(ids) > 0 and all(isinstance(r, Sequence) for r in ids)
        rows = [self._check_ids(r) for r in ids] if batch else [self._check_ids(ids)]
        out: list[list[int]] = [[] for _ in rows]
        for step in decode_batch(self, rows, opts, self._eos_ids()):
            for row, token in step.items():
                out[row].append(token)
        return out if batch else out[0]

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
        min_new_tokens: int = 0,
    ) -> Iterator[str]:
        """Yield the generated text in pieces as they decode; ``"".join`` equals ``generate``.

        Only complete text is yielded (no half multi-byte characters); output ends before the
        first stop string, which is not included.
        """
        opts = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed, min_new_tokens)
        stops = _stop_strings(stop)
        ids = self._check_ids(self._prompt_ids(prompt, chat))
        return self._pieces(ids, opts, TextStreamer(self.tokenizer, stops))

    def _pieces(
        self, ids: list[int], opts: SamplingConfig, streamer: TextStreamer
    ) -> Iterator[str]:
        self.last_counts = (len(ids), 0)  # (prompt tokens, new tokens): `generate --verbose`
        with torch.inference_mode():
            for step in decode_batch(self, [ids], opts, self._eos_ids()):
                self.last_counts = (len(ids), self.last_counts[1] + len(step))
                piece = "".join(streamer.push(token) for token in step.values())
                if piece:
                    yield piece
                if streamer.stopped:
                    return
        tail = streamer.flush()
        if tail:
            yield tail

    def _generate_batch(
        self,
        prompts: list,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        chat: bool = False,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[str]:
        """The texts of several prompts decoded together; a row leaves the batch at its stop."""
        opts = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed, min_new_tokens)
        stops = _stop_strings(stop)
        rows = [self._check_ids(self._prompt_ids(p, chat)) for p in prompts]
        streamers = [TextStreamer(self.tokenizer, stops) for _ in rows]
        texts, ended = ["" for _ in rows], set()
        self.last_counts = (sum(len(r) for r in rows), 0)
        with torch.inference_mode():
            for step in decode_batch(self, rows, opts, self._eos_ids(), ended):
                self.last_counts = (self.last_counts[0], self.last_counts[1] + len(step))
                for row, token in step.items():
                    texts[row] += streamers[row].push(token)
                    if streamers[row].stopped:
                        ended.add(row)
        return [text + s.flush() for text, s in zip(texts, streamers, strict=True)]

    def generate(self, prompt, **options) -> str | list[str]:
        """Generate text after ``prompt``; keyword options as for ``stream``.

        A list of prompts (str, or message lists with ``chat=True``) returns a list of texts,
        decoded together as one left-padded batch: each row attends only to its own tokens and
        keeps its own positions, so its greedy text equals the text it gets alone, and a row
        leaves the batch at its end-of-sequence token or stop string.

        Parameters
        ----------
        prompt : str, or a list of ``{"role", "content"}`` messages with ``chat=True``; or a
            list of those (a batch).
        max_new_tokens : int, default 64
        temperature : float, default 0.0 (greedy)
        top_k, top_p : optional sampling filters (applied after temperature, as in HF).
        stop : str or list of str; the text ends before the first one.
        chat : apply the tokenizer's chat template to a user message (error if it has none).
        min_new_tokens : int, default 0; no end-of-sequence token before this many new tokens
            (HF's ``min_new_tokens``; a stop string still ends the text).
        seed : makes sampling reproducible (a batch draws from one generator: its sampled
            texts differ from the prompts' texts alone).

        Examples
        --------
        >>> model.generate(["The capital of France is", "def fibonacci(n):"], max_new_tokens=8)
        """
        if _is_batch(prompt):
            return self._generate_batch(list(prompt), **options)
        return "".join(self.stream(prompt, **options))


def _is_batch(prompt) -> bool:
    """A list of prompts (str or message lists), not one chat (a list of message dicts)."""
    return (
        isinstance(prompt, list | tuple)
        and len(prompt) > 0
        and all(isinstance(p, str | list) for p in prompt)
    )


def _stop_strings(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    if not all(isinstance(s, str) for s in stops):
        raise InputError(f"stop must be a str or a list of str, got {stop!r}")
    return stops


_HF_LAYER = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
}


# Llama's norms: before attention and before the MLP.


def causal_lm_map(
    cfg: CausalLMConfig, norms: dict[str, str], extra: dict[str, str]
) -> dict[str, Target]:
    """The Hugging Face ``*ForCausalLM`` name map shared by Llama and OLMo.

    ``norms``: per-layer norm module -> canonical norm; ``extra``: more per-layer modules.
    A checkpoint of a tied model may still carry ``lm_head.weight``: it is dropped.
    """
    out: dict[str, Target] = {
        "model.embed_tokens.weight": "token_embed.weight",
        "model.norm.weight": "final_norm.weight",
        "lm_head.weight": None if cfg.tie_embeddings else "lm_head.weight",
        "model.rotary_emb.inv_freq": None,  # buffer in old checkpoints
    }
    for src, dst in (_HF_LAYER | extra).items():
        for kind in ("weight", "bias"):
            out[f"model.layers.{{}}.{src}.{kind}"] = f"layers.{{}}.{dst}.{kind}"
    for src, dst in norms.items():
        out[f"model.layers.{{}}.{src}.weight"] = f"layers.{{}}.{dst}.weight"
    out["model.layers.{}.self_attn.rotary_emb.inv_freq"] = None
    return out


def causal_lm_config(cfg: dict[str, Any], where: str, family: str, **body: Any) -> CausalLMConfig:
    """CausalLMConfig from a ``*ForCausalLM`` config.json; ``body`` sets norm and friends."""
    dim = int(require(cfg, "hidden_size", where))
    heads = int(require(cfg, "num_attention_heads", where))
    attention_bias = bool(cfg.get("attention_bias", False))
    head_dim = cfg.get("head_dim")
    body_cfg = TransformerConfig(
        dim=dim,
        n_layers=int(require(cfg, "num_hidden_layers", where)),
        n_heads=heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=None if head_dim in (None, dim // heads) else int(head_dim),
        mlp_dim=int(require(cfg, "intermediate_size", where)),
        activation=gated_activation(cfg.get("hidden_act", "silu"), where),
        causal=True,
        positions="rotary",
        max_positions=int(cfg.get("max_position_embeddings") or 2048),
        rope_theta=rope_theta(cfg, where),
        qkv_bias=attention_bias,
        k_bias=attention_bias,
        out_bias=attention_bias,
        **body,
    )
    return CausalLMConfig(
        body=body_cfg,
        vocab_size=int(require(cfg, "vocab_size", where)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=optional_int(cfg.get("bos_token_id")),
        eos_token_ids=token_ids(cfg.get("eos_token_id")),
        pad_token_id=optional_int(cfg.get("pad_token_id")),
        family=family,
    )


def causal_lm_family(name: str, **sources: Any) -> Family:
    """The ``Family`` of a decoder-only LM called ``name`` (``hf=``, ``gguf=``, ``presets=``)."""
    return Family(
        name=name,
        config_class=CausalLMConfig,
        model_class=CausalLM,
        describes="a causal LM weight file (text generation, not embeddings)",
        provider_argument="none: use `generate`",
        tasks=("generate",),
        **sources,
    )


def causal_lm_export_config(
    cfg: CausalLMConfig, model_type: str, architecture: str, **extra: Any
) -> dict[str, Any]:
    """The ``*ForCausalLM`` config.json of ``cfg`` (inverse of ``causal_lm_config``); ``extra``
    adds the family's own keys (norm eps, clip_qkv)."""
    body = cfg.body
    eos = list(cfg.eos_token_ids)
    return {
        "architectures": [architecture], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": body.dim, "num_hidden_layers": body.n_layers,
        "num_attention_heads": body.n_heads,
        "num_key_value_heads": body.n_kv_heads or body.n_heads,
        "head_dim": body.head_dim or body.dim // body.n_heads,
        "intermediate_size": body.mlp_dim, "hidden_act": "silu",
        "max_position_embeddings": body.max_positions, "rope_theta": body.rope_theta,
        "attention_bias": body.qkv_bias, "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos or None,
        "pad_token_id": cfg.pad_token_id, "torch_dtype": "float32", **extra,
    }  # fmt: skip
