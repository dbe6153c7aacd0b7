"""The frozen config of the shared core: ``TransformerConfig``, and the checks every config uses.

Each family's own config (``CLIPConfig``, ``BertConfig`` ...) lives in its module under
``families/``; a config is written as JSON into every weight file (``families.config_to_dict``) and
rebuilt from it (``families.config_from_dict``); nothing is ever guessed from a file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

NormKind = Literal["layernorm", "rmsnorm", "layernorm_nonparam"]
# pre:     x = x + f(norm(x))            (GPT, CLIP, Whisper, Llama, OLMo-1)
# post:    x = norm(x + f(x))            (BERT)
# sandwich_post: x = x + norm(f(x))      (OLMo-2: norm after the sublayer, inside the residual)
NormPlacement = Literal["pre", "post", "sandwich_post"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "swiglu"]
# learned/sinusoidal: an absolute table added by the model's stem (stored as a tensor);
# rotary: applied to q and k inside attention; none: no positions.
Positions = Literal["learned", "sinusoidal", "rotary", "none"]

_NORMS = ("layernorm", "rmsnorm", "layernorm_nonparam")
_PLACEMENTS = ("pre", "post", "sandwich_post")
_ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")
_POSITIONS = ("learned", "sinusoidal", "rotary", "none")


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; expected one of {list(allowed)}")


def check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    """The shared transformer body. Every model quirk is a value here, never a new class.

    ``n_kv_heads`` and ``head_dim`` may be given as None (``n_heads`` and ``dim // n_heads``);
    the built config always holds the resolved numbers, so each quantity has one name.
    """

    dim: int
    n_layers: int
    n_heads: int
    mlp_dim: int
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention when < n_heads)
    head_dim: int | None = None  # width of one attention head
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"
    activation: Activation = "gelu"
    causal: bool = False
    positions: Positions = "learned"
    max_positions: int = 0  # length of the absolute table, or the rotary context length
    rope_theta: float = 10000.0
    qkv_bias: bool = True  # bias on q and v (and k unless k_bias is False)
    k_bias: bool = True  # Whisper's k projection has no bias
    out_bias: bool = True  # bias on the attention output projection
    mlp_bias: bool = True
    qk_norm: bool = False  # OLMo-2: a norm over the full q and k projections
    clip_qkv: float | None = None  # OLMo-1 option: clamp q, k, v to [-c, c]
    cross_attention: bool = False  # Whisper decoder
    final_norm: bool = True

    def __post_init__(self) -> None:
        check_positive("TransformerConfig", dim=self.dim, n_layers=self.n_layers)
        check_positive("TransformerConfig", n_heads=self.n_heads, mlp_dim=self.mlp_dim)
        check_choice("norm", self.norm, _NORMS)
        check_choice("norm_placement", self.norm_placement, _PLACEMENTS)
        check_choice("activation", self.activation, _ACTIVATIONS)
        check_choice("positions", self.positions, _POSITIONS)
        self._resolve_heads()
        if self.positions == "rotary" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.positions in ("learned", "sinusoidal") and self.max_positions <= 0:
            raise ConfigError(f"positions={self.positions!r} needs max_positions > 0")
        if not isinstance(self.norm_eps, int | float) or not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be a number > 0, got {self.norm_eps!r}")

    def _resolve_heads(self) -> None:
        """Fill ``n_kv_heads`` / ``head_dim`` given as None (construction, not reassignment)."""
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                    "set head_dim explicitly or pick a divisor"
                )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        check_positive("TransformerConfig", n_kv_heads=self.n_kv_heads, head_dim=self.head_dim)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}"
            )
