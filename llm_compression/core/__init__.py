"""The shared transformer core: norms, attention (+ rotary, KV cache), MLP, Block, Transformer."""

from .attention import Attention, KVCache, Rotary, apply_rotary
from .block import Block
from .mlp import MLP, quick_gelu
from .norm import LayerNorm, RMSNorm, make_norm
from .transformer import Transformer

__all__ = [
    "MLP",
    "Attention",
    "Block",
    "KVCache",
    "LayerNorm",
    "RMSNorm",
    "Rotary",
    "Transformer",
    "apply_rotary",
    "make_norm",
    "quick_gelu",
]
