"""Model families on the shared core, and ``load_model`` to build one from a weight file.

Example
-------
>>> from llm_compression.models import load_model
>>> model = load_model("all-minilm-l6-v2.parquet")                           # doctest: +SKIP
>>> model.embed_texts(["hello"]).shape                                       # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import logging
import os
import time

import torch
from torch import nn

from ..config import BertConfig, CausalLMConfig, CLIPConfig, ModelConfig, WhisperConfig
from ..errors import ConfigError, InputError, MissingTensorError, UnsupportedFamilyError
from .bert import SentenceEncoder
from .causal_lm import CausalLM
from .clip import CLIP

log = logging.getLogger(__name__)

__all__ = ["CLIP", "CausalLM", "SentenceEncoder", "build_model", "load_model", "load_weights_into"]


def _model_class(config: ModelConfig) -> type[nn.Module]:
    if isinstance(config, CLIPConfig):
        return CLIP
    if isinstance(config, BertConfig):
        return SentenceEncoder
    if isinstance(config, CausalLMConfig):
        return CausalLM
    if isinstance(config, WhisperConfig):
        from .whisper import Whisper

        return Whisper
    raise UnsupportedFamilyError(
        f"no model for config {type(config).__name__}; supported families: "
        "clip, whisper, bert, olmo, llama"
    )


def build_model(config: ModelConfig) -> nn.Module:
    """The model for ``config`` with parameters on the meta device (no memory, no init)."""
    cls = _model_class(config)
    try:
        with torch.device("meta"):
            return cls(config)
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # e.g. a dim too large
        raise ConfigError(f"{type(config).__name__} cannot build a {cls.__name__}: {e}") from e


def load_weights_into(
    model: nn.Module, weights: dict[str, torch.Tensor], *, dtype=None
) -> nn.Module:
    """Assign canonical-name ``weights`` to ``model`` (strict), cast to ``dtype``; inference mode."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise MissingTensorError(
            f"weights do not fit {type(model).__name__}: missing {missing[:8]} "
            f"({len(missing)} in all), unexpected {unexpected[:8]} ({len(unexpected)} in all); "
            "was the file converted for this model family and config?"
        )
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:  # size mismatches
        raise ConfigError(f"weights do not fit {type(model).__name__}: {e}") from e
    model.eval()
    model.requires_grad_(False)
    return model


def load_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """Build the model stored in a weight file: CLIP, Whisper, SentenceEncoder or CausalLM.

    The class is picked from the family recorded in the file; the model is built on the meta
    device, the weights are assigned (strict), and the file's tokenizer is attached as
    ``model.tokenizer``.

    Parameters
    ----------
    path : a weight file written by ``llm_compression.store.write_model``.
    dtype : compute dtype (float32 default; bfloat16 / float16 trade precision for speed).
    device : torch device for the weights.
    """
    from ..loader import WeightLoader
    from ..preprocess.text import Tokenizer

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    start = time.perf_counter()
    loader = WeightLoader(path, device=device)
    loader.check_layer_count()
    model = build_model(loader.config)
    loader.check_fits(model)  # shapes against the config before decoding anything
    load_weights_into(model, loader.load_weights(), dtype=dtype)
    model.tokenizer = Tokenizer.from_files(dict(loader.metadata.files))
    log.info("loaded %s from %s in %.3f s", type(model).__name__, path, time.perf_counter() - start)
    return model
