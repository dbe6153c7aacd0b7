"""The feed-forward sublayer: ``down(act(up(x)))`` or SwiGLU ``down(silu(gate(x)) * up(x))``, and the
uninitialised ``linear`` / ``embedding`` layers every model is built from."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig
from .compute_layers import activated, added, rescale_linear

QUICK_GELU_SCALE = 1.702


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(QUICK_GELU_SCALE * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu, "swiglu": F.silu}


def linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    """An ``nn.Linear`` whose parameters are left uninitialised (they are always loaded)."""
    layer = nn.Linear(n_in, n_out, bias=bias, device="meta")
    layer.weight = nn.Parameter(torch.empty(n_out, n_in))
    if bias:
        layer.bias = nn.Parameter(torch.empty(n_out))
    return layer


def embedding(n: int, dim: int) -> nn.Embedding:
    """An ``nn.Embedding`` with an uninitialised weight (it is always loaded).

    ``_weight`` skips ``reset_parameters``: its ``normal_`` on the meta device runs through
    torch's reference ops, which import ``torch._dynamo`` (and sympy): ~1 s of cold start."""
    return nn.Embedding(n, dim, _weight=torch.empty(n, dim))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        self.act = ACTIVATIONS[cfg.activation]
        self.up = linear(cfg.dim, cfg.mlp_dim, cfg.mlp_bias)
        if self.swiglu:
            self.gate = linear(cfg.dim, cfg.mlp_dim, cfg.mlp_bias)
        self.down = linear(cfg.mlp_dim, cfg.dim, cfg.mlp_bias)
        self.gate_up: nn.Module | None = None  # gate and up in one matmul (quantized loading)

    def compute_converted(self, mode: str) -> None:
        """``quick_gelu(up(x)) = silu(a up(x)) / a`` with ``a = 1.702``: ``a`` goes into
        ``up``'s weights and ``1 / a`` into ``down``'s, so the activation is one ``silu`` pass
        instead of three elementwise passes (in int8 CLIP's vision tower spent 30% of its time in
        them; docs/decisions/0008-encoder-speed.md). In every mode ``core.compute`` converts
        (float32 too where it runs on oneDNN, before packing: the products change in the last
        bits, as the kernel's summation order does)."""
        if mode not in ("float32", "bfloat16", "int8") or self.act is not quick_gelu:
            return
        rescale_linear(self.up, QUICK_GELU_SCALE, QUICK_GELU_SCALE)
        rescale_linear(self.down, 1 / QUICK_GELU_SCALE, 1.0)
        self.act = F.silu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``down(...)`` of ``x``, plus ``residual`` if given (summed in the matmul's output)."""
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            hidden = self.act(gate) * up
        elif self.swiglu:
            hidden = activated(self.gate, x, self.act) * self.up(x)
        else:
            hidden = activated(self.up, x, self.act)
        return added(self.down, hidden, residual)
