"""Normalisation layers: LayerNorm, RMSNorm and the parameter-free LayerNorm (OLMo-1).

Parameters are created with ``torch.empty`` (no values in ``__init__``) so models build on the meta
device and are filled by ``load_state_dict(..., assign=True)``. Half-precision inputs are normalised in
float32 and cast back, as HuggingFace does for RMSNorm and OLMo's LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NormKind
from ..errors import ConfigError


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension, with weight and bias (``affine``) or without."""

    def __init__(self, dim: int, eps: float, *, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.empty(dim)) if affine else None
        self.bias = nn.Parameter(torch.empty(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and self.weight is None:
            return F.layer_norm(x.float(), (self.dim,), None, None, self.eps).to(x.dtype)
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension (Llama, OLMo-2)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        y = F.rms_norm(x.float(), (self.dim,), None, self.eps)
        return self.weight * y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(kind: NormKind, dim: int, eps: float) -> nn.Module:
    """The norm named by a ``TransformerConfig.norm`` value."""
    if kind == "layernorm":
        return LayerNorm(dim, eps)
    if kind == "layernorm_nonparam":
        return LayerNorm(dim, eps, affine=False)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    raise ConfigError(
        f"norm={kind!r} is not supported; expected layernorm, rmsnorm or layernorm_nonparam"
    )
