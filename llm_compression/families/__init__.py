"""The model families and their registry: one module per family, one line per family here.

Each family module defines a ``FAMILY`` (``spec.Family``): its frozen config class, its model,
its converter maps per checkpoint format, what its files are for, its presets. Everything
family-specific elsewhere (conversion, loading, the provider, the CLI) is read from here.

Example
-------
>>> from llm_compression.families import family, preset
>>> family("bert").describes
'a sentence-encoder (MiniLM/BERT) weight file'
>>> preset("all-minilm-l6-v2").encoder.dim
384
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch

from ..config import TransformerConfig
from ..errors import ConfigError, UnsupportedFamilyError, WrongFamilyError
from .bert import BertConfig, SentenceEncoder
from .causal_lm import CausalLM, CausalLMConfig
from .clip import CLIP, CLIPConfig
from .spec import Family, Source
from .whisper import Whisper, WhisperConfig

# The registry: one line per family module (each defines FAMILY).
_MODULES = (
    "clip",
    "whisper",
    "bert",
    "olmo",
    "llama",
    "mobilenet_v2",
)
REGISTRY: dict[str, Family] = {
    f.name: f for f in (importlib.import_module(f"{__name__}.{m}").FAMILY for m in _MODULES)
}
FAMILIES = tuple(REGISTRY)
PRESETS: dict[str, Any] = {name: cfg for f in REGISTRY.values() for name, cfg in f.presets.items()}

__all__ = [
    "CLIP",
    "BertConfig",
    "CLIPConfig",
    "CausalLM",
    "CausalLMConfig",
    "SentenceEncoder",
    "Whisper",
    "WhisperConfig",
    "FAMILIES",
    "PRESETS",
    "REGISTRY",
    "Family",
    "Source",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "family",
    "preset",
    "quantizable_names",
    "require_task",
    "tensor_shapes",
]


def family(name: Any) -> Family:
    """The registered family called ``name``."""
    if name not in REGISTRY:
        raise UnsupportedFamilyError(
            f"unknown model family {name!r}; supported families: {list(FAMILIES)}"
        )
    return REGISTRY[name]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict (nested TransformerConfigs become dicts) including ``family``."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: Any) -> Any:
    """Rebuild a family config from ``config_to_dict`` output (as read from a weight file)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a model config must be a JSON object, got {type(data).__name__}; the file's config "
            "is damaged: convert the checkpoint again"
        )
    name = data.get("family")
    if not isinstance(name, str) or name not in REGISTRY:
        raise ConfigError(
            f"the config names model family {name!r}; supported families: {list(FAMILIES)} (was "
            "the file written by a newer llm_compression?)"
        )
    return _build(REGISTRY[name].config_class, data)


def _build(cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields) - {"family"})
    if unknown:
        raise ConfigError(
            f"{cls.__name__} got unknown fields {unknown}; expected a subset of {sorted(fields)} "
            "(was the file written by a newer llm_compression?)"
        )
    kwargs = {name: _value(fields[name], value) for name, value in data.items() if name in fields}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {cls.__name__} from {sorted(data)}: {e}") from e


def _value(f: dataclasses.Field, value: Any) -> Any:
    if f.type in (TransformerConfig, "TransformerConfig"):
        return _build(TransformerConfig, value)
    return tuple(value) if isinstance(value, list) else value


def preset(name: str) -> Any:
    """The config registered under exactly ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"no preset named {name!r}; known presets: {sorted(PRESETS)}") from None


def build_model(config: Any) -> torch.nn.Module:
    """The model for ``config`` with parameters on the meta device (no memory, no init)."""
    cls = family(config.family).model_class
    try:
        with torch.device("meta"):
            return cls(config)
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # e.g. a dim too large
        raise ConfigError(f"{type(config).__name__} cannot build a {cls.__name__}: {e}") from e


def _built(config_or_model: Any) -> torch.nn.Module:
    """The model itself, or the one its config builds on the meta device."""
    if isinstance(config_or_model, torch.nn.Module):
        return config_or_model
    return build_model(config_or_model)


def tensor_shapes(config_or_model: Any) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor the model holds, in build order.

    Read off the model (built on the meta device from a config), so it can never disagree with it.
    """
    return {name: tuple(t.shape) for name, t in _built(config_or_model).state_dict().items()}


def quantizable_names(config_or_model: Any) -> set[str]:
    """Names of the weights of the model's linear and embedding layers (what int8 may quantize).

    Taken from the module types, not from names: position tables held as plain parameters,
    convolutions, norms and biases are left out.
    """
    model = _built(config_or_model)
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return {
        f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, kinds)
    }


def require_task(name: Any, task: str, where: Any) -> Family:
    """The family ``name`` of the file at ``where``, or ``WrongFamilyError`` if it cannot ``task``."""
    fam = family(name)
    if task not in fam.tasks:
        able = [f for f in REGISTRY.values() if task in f.tasks]
        kinds = " or ".join(dict.fromkeys(f.describes for f in able))
        raise WrongFamilyError(
            f"{where} is {fam.describes} (family {name!r}); {task} needs {kinds} (family "
            f"{' or '.join(repr(f.name) for f in able)}): convert such a checkpoint with "
            "`llm-compression convert`, or use `embed` for embedding models"
        )
    return fam
