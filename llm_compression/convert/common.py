"""Helpers shared by the per-family converters: reading upstream config values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Activation
from ..errors import ConversionError

# Hugging Face ``hidden_act`` values -> our activation names (gated MLPs become swiglu).
HF_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


def require(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    """``cfg[key]``, or a ConversionError naming the file and the key."""
    if key not in cfg or cfg[key] is None:
        raise ConversionError(
            f"{where} has no {key!r}; the config is incomplete: re-save it with the upstream "
            "library (save_pretrained writes every field)"
        )
    return cfg[key]


def activation(name: Any, where: str) -> Activation:
    """Our activation for a non-gated Hugging Face ``hidden_act``."""
    if name not in HF_ACTIVATIONS:
        raise ConversionError(
            f"{where}: activation {name!r} is not supported; expected one of {sorted(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


def gated_activation(name: Any, where: str) -> Activation:
    """Gated MLPs (Llama, OLMo): only SiLU gates (swiglu) are supported."""
    if name not in ("silu", "swish"):
        raise ConversionError(
            f"{where}: gated MLP activation {name!r} is not supported; expected 'silu' (swiglu)"
        )
    return "swiglu"


def token_ids(value: Any) -> tuple[int, ...]:
    """An id or a list of ids (``eos_token_id`` may be either) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return (int(value),)


def optional_int(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else int(value)


def rope_theta(cfg: Mapping[str, Any], where: str, default: float = 10000.0) -> float:
    """The rotary base from ``rope_theta`` or ``rope_parameters``; scaled rotary is refused."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConversionError(
            f"{where}: rope type {kind!r} is not supported (only plain rotary positions); "
            "this model needs a scaled-rotary implementation that llm_compression does not have"
        )
    theta = params.get("rope_theta", cfg.get("rope_theta", default))
    return float(theta)
