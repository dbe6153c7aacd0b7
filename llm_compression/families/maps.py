"""Declarative converter maps (gpt-fast ``weight_map`` style) and the helpers that read upstream configs.

A family module states, for each checkpoint format it converts from, a map from upstream tensor
names to canonical names (``{}`` stands for the layer index; ``None`` drops a tensor; ``Split``
sends a fused tensor to several canonical tensors) and a function that builds its config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class Split:
    """An upstream tensor holding ``len(targets)`` equal parts along dim 0 (fused q, k, v).

    A ``None`` target is a part that must be all zeros and is dropped (CTranslate2 stores a zero
    k bias for Whisper, whose k projection has no bias).
    """

    targets: tuple[str | None, ...]


Target = str | Split | None


Loader = Callable[[], np.ndarray]


@dataclass(frozen=True)
class Item:
    """One canonical tensor to write: its shape and how to read it (float32)."""

    shape: tuple[int, ...]
    load: Loader


def read_json(path: Path) -> Any:
    """Parse a JSON file; a malformed one raises ConversionError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {path} as JSON: {e}; restore the file") from e


# Our activation names -> the Hugging Face ``hidden_act`` that export writes (inverse of the above).
HF_ACTIVATION_NAMES: dict[str, str] = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "quick_gelu": "quick_gelu",
}
