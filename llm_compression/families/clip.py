"""CLIP: a ViT vision tower and a causal text tower on the shared core, each with a projection.

Everything the project knows about CLIP: its config, the model, the Hugging Face ``CLIPModel``
converter map and the ViT-B/32 preset.

``encode_image`` / ``encode_text`` return projected, unnormalised features in the joint space
(``projection_dim``, 512 for ViT-B/32); ``logit_scale`` is stored as its log, as in the checkpoints.
The provider tokenizes (texts longer than the 77-token context are truncated keeping the
end-of-text token last, as OpenAI's ``clip.tokenize(..., truncate=True)`` does), batches and
normalises.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig, check_positive
from ..core import Transformer
from ..core.compute import converted_linear
from ..core.mlp import embedding, linear
from ..core.norm import LayerNorm
from ..errors import ConfigError, ConversionError, InputError
from .maps import HF_ACTIVATION_NAMES, Target, activation, read_json, require
from .methods import FamilyMethods
from .spec import Family, Source


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP: a vision tower (ViT) and a causal text tower, each with a linear projection."""

    vision: TransformerConfig
    text: TransformerConfig
    image_size: int = 224
    patch_size: int = 32
    projection_dim: int = 512
    vocab_size: int = 49408
    eos_token_id: int = 49407  # text pooling takes the hidden state at this token
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    family: str = field(default="clip", init=False)

    def __post_init__(self) -> None:
        check_positive("CLIPConfig", image_size=self.image_size, patch_size=self.patch_size)
        check_positive("CLIPConfig", projection_dim=self.projection_dim, vocab_size=self.vocab_size)
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        n_pos = (self.image_size // self.patch_size) ** 2 + 1
        if self.vision.max_positions != n_pos:
            raise ConfigError(
                f"vision.max_positions must be (image_size/patch_size)^2 + 1 = {n_pos}, "
                f"got {self.vision.max_positions}"
            )

    @property
    def context_length(self) -> int:
        return self.text.max_positions


class VisionTower(Transformer):
    """Patch conv stem + class token + learned positions + pre-norm -> body -> CLS -> projection."""

    def __init__(self, config: CLIPConfig) -> None:
        cfg = config.vision
        super().__init__(cfg)
        self.patch_size = config.patch_size
        self.patch_embed = nn.Conv2d(
            3, cfg.dim, config.patch_size, config.patch_size, bias=False, device="meta"
        )
        self.patch_embed.weight = nn.Parameter(
            torch.empty(cfg.dim, 3, config.patch_size, config.patch_size)
        )
        self.class_embed = nn.Parameter(torch.empty(cfg.dim))
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))
        self.pre_norm = LayerNorm(cfg.dim, cfg.norm_eps)
        self.proj = linear(cfg.dim, config.projection_dim, False)
        self.patch_linear: nn.Module | None = None  # the patch conv in a compute mode

    def compute_converted(self, mode: str) -> None:
        """bfloat16 and int8: the patch convolution as a bfloat16 linear layer over the flattened
        patches, (B * 49, 3072) x (3072, 768) on oneDNN's packed weight (one thread, b16: float32
        conv 33.7 ms, bfloat16 conv 13.3, this 5.4; int8 patches were 0.012 off, so int8 mode
        takes bfloat16 here too)."""
        if mode in ("bfloat16", "int8"):
            weight = self.patch_embed.weight.detach().flatten(1)  # (C, 3 * p * p), (c, y, x) order
            self.patch_linear = converted_linear(weight, "bfloat16")
            self.patch_embed = None

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, N, 3 * p * p) flattened patches, row-major over the grid, as the conv sees them."""
        B, C, H, W = pixels.shape
        p = self.patch_size
        grid = pixels.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return grid.reshape(B, (H // p) * (W // p), C * p * p)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised image features (B, P) for pixels (B, 3, S, S)."""
        if self.patch_linear is not None:
            x = self.patch_linear(self._patches(pixels.to(torch.bfloat16))).float()  # (B, N, C)
        else:
            x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, C, S/p, S/p)
            x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embed.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N + 1, C)
        h = super().forward(self.pre_norm(x))  # final_norm is CLIP's post_layernorm
        return self.proj(h[:, 0])


class TextTower(Transformer):
    """Token + learned position embeddings -> causal body -> final norm -> EOT token -> projection."""

    lookup_tables = ("token_embed",)  # int8: int8 rows (core.compute; 101 MB in float32)

    def __init__(self, config: CLIPConfig) -> None:
        cfg = config.text
        super().__init__(cfg)
        self.eos_token_id = config.eos_token_id
        self.token_embed = embedding(config.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, cfg.dim))
        self.proj = linear(cfg.dim, config.projection_dim, False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised text features (B, P) for token ids (B, T), T <= context."""
        T = ids.shape[1]
        if self.pos_embed.shape[0] < T:
            raise InputError(
                f"{T} tokens exceed CLIP's context of {self.pos_embed.shape[0]}; truncate the ids"
            )
        h = super().forward(self.token_embed(ids) + self.pos_embed[:T])  # (B, T, C)
        # the first end-of-text token (padding repeats it); legacy HF configs that said
        # eos_token_id=2 are converted to the real end token, the highest id (hf_config)
        eot = (ids == self.eos_token_id).int().argmax(dim=-1)
        return self.proj(h[torch.arange(ids.shape[0], device=ids.device), eot])


class CLIP(FamilyMethods, nn.Module):
    """CLIP with ``vision`` and ``text`` towers and ``logit_scale`` (canonical names).

    Tensors in, tensors out, as OpenAI's ``model.py``: ``encode_image`` / ``encode_text`` return
    the projected, **unnormalised** features (Hugging Face's ``get_image_features`` /
    ``get_text_features``). Preprocessing (pixels, token ids), batching and the one L2
    normalisation belong to ``llm_compression.provider`` (``CLIPEngine``).
    """

    normalizes = False  # the provider L2-normalises the features (once)
    empty_text_ok = False  # the provider refuses "": CLIP needs at least one token of text

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.tokenizer = None

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    @property
    def text_context(self) -> int:
        """Most tokens of one text, start and end tokens included (77)."""
        return self.config.context_length

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image features (B, P), unnormalised, for preprocessed pixels (B, 3, S, S)."""
        size = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise InputError(
                f"pixels must have shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}; "
                "preprocess images with preprocess.image.clip_pixels (or use CLIPEngine)"
            )
        return self.vision(pixels)

    @torch.inference_mode()
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text features (B, P), unnormalised, for token ids (B, T) with end-of-text.

        ``mask`` (B, T) is accepted for the common text signature and not needed: the tower is
        causal and pools at the first end-of-text token, so right padding never changes a row.
        """
        return self.text(ids)

    @torch.inference_mode()
    def similarity_logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * cos(image, text)`` (images x texts), as CLIP's ``logits_per_image``.

        Takes features from ``encode_image`` / ``encode_text`` (normalised here, as CLIP's forward).
        """
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return self.logit_scale.exp() * image @ text.T


_LAYER = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.out_proj": "attn.o",
    "layer_norm1": "attn_norm",
    "mlp.fc1": "mlp.up",
    "mlp.fc2": "mlp.down",
    "layer_norm2": "mlp_norm",
}


def _tower_map(hf: str, ours: str) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for src, dst in _LAYER.items():
        for kind in ("weight", "bias"):
            out[f"{hf}.encoder.layers.{{}}.{src}.{kind}"] = f"{ours}.layers.{{}}.{dst}.{kind}"
    return out


HF_MAP: dict[str, Target] = {
    "vision_model.embeddings.patch_embedding.weight": "vision.patch_embed.weight",
    "vision_model.embeddings.class_embedding": "vision.class_embed",
    "vision_model.embeddings.position_embedding.weight": "vision.pos_embed",
    "vision_model.embeddings.position_ids": None,  # buffer
    "vision_model.pre_layrnorm.weight": "vision.pre_norm.weight",
    "vision_model.pre_layrnorm.bias": "vision.pre_norm.bias",
    "vision_model.post_layernorm.weight": "vision.final_norm.weight",
    "vision_model.post_layernorm.bias": "vision.final_norm.bias",
    "visual_projection.weight": "vision.proj.weight",
    "text_model.embeddings.token_embedding.weight": "text.token_embed.weight",
    "text_model.embeddings.position_embedding.weight": "text.pos_embed",
    "text_model.embeddings.position_ids": None,  # buffer
    "text_model.final_layer_norm.weight": "text.final_norm.weight",
    "text_model.final_layer_norm.bias": "text.final_norm.bias",
    "text_projection.weight": "text.proj.weight",
    "logit_scale": "logit_scale",
    **_tower_map("vision_model", "vision"),
    **_tower_map("text_model", "text"),
}

# Before transformers fixed it, CLIP text configs said eos_token_id=2 and pooled at argmax(ids),
# which is the end-of-text token: the highest id of the CLIP vocabulary.
_LEGACY_EOS = 2


def _tower(
    sub: dict[str, Any], where: str, *, causal: bool, max_positions: int
) -> TransformerConfig:
    return TransformerConfig(
        dim=int(require(sub, "hidden_size", where)),
        n_layers=int(require(sub, "num_hidden_layers", where)),
        n_heads=int(require(sub, "num_attention_heads", where)),
        mlp_dim=int(require(sub, "intermediate_size", where)),
        norm_eps=float(sub.get("layer_norm_eps", 1e-5)),
        activation=activation(sub.get("hidden_act", "quick_gelu"), where),
        causal=causal,
        max_positions=max_positions,
    )


def hf_config(cfg: dict[str, Any], folder: Path) -> CLIPConfig:
    """CLIPConfig from a CLIPModel config.json (+ preprocessor_config.json when present)."""
    where = str(folder / "config.json")
    vis = require(cfg, "vision_config", where)
    txt = require(cfg, "text_config", where)
    image_size = int(vis.get("image_size", 224))
    patch_size = int(vis.get("patch_size", 32))
    vocab = int(txt.get("vocab_size", 49408))
    eos = int(txt.get("eos_token_id", vocab - 1))
    kwargs: dict[str, Any] = {}
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        proc = read_json(pre)
        if "image_mean" in proc:
            kwargs["image_mean"] = tuple(float(x) for x in proc["image_mean"])
            kwargs["image_std"] = tuple(float(x) for x in proc["image_std"])
    return CLIPConfig(
        vision=_tower(
            vis, where + " vision_config", causal=False,
            max_positions=(image_size // patch_size) ** 2 + 1,
        ),
        text=_tower(
            txt, where + " text_config", causal=True,
            max_positions=int(txt.get("max_position_embeddings", 77)),
        ),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=int(cfg.get("projection_dim", 512)),
        vocab_size=vocab,
        eos_token_id=vocab - 1 if eos == _LEGACY_EOS else eos,
        **kwargs,
    )  # fmt: skip


def bpe_to_vocab_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` as a (vocab.json, merges.txt) pair.

    Follows CLIP's ``SimpleTokenizer``: 256 byte symbols, the same with ``</w>``, one symbol per
    merge (the first 48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 ids.
    """
    try:
        with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise ConversionError(f"cannot read the CLIP BPE vocabulary {bpe_gz}: {e}") from e
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def write_clip_vocab(folder: Path, bpe_gz: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` built from CLIP's BPE file into ``folder``."""
    vocab, merges = bpe_to_vocab_merges(bpe_gz)
    Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    Path(folder, "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as in CLIP's tokenizer)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def _clip_vit_b_32() -> CLIPConfig:
    vision = TransformerConfig(
        dim=768, n_layers=12, n_heads=12, mlp_dim=3072, activation="quick_gelu", max_positions=50
    )
    text = TransformerConfig(
        dim=512, n_layers=12, n_heads=8, mlp_dim=2048, activation="quick_gelu",
        causal=True, max_positions=77,
    )  # fmt: skip
    return CLIPConfig(vision=vision, text=text)


def _hf_tower(tower: TransformerConfig) -> dict[str, Any]:
    return {
        "hidden_size": tower.dim, "intermediate_size": tower.mlp_dim,
        "num_hidden_layers": tower.n_layers, "num_attention_heads": tower.n_heads,
        "hidden_act": HF_ACTIVATION_NAMES[tower.activation], "layer_norm_eps": tower.norm_eps,
    }  # fmt: skip


def hf_export_config(cfg: CLIPConfig, files: Any = None) -> dict[str, Any]:
    """The ``CLIPModel`` config.json of ``cfg`` (inverse of ``hf_config``)."""
    text = _hf_tower(cfg.text) | {
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.text.max_positions,
        "eos_token_id": cfg.eos_token_id, "projection_dim": cfg.projection_dim,
    }  # fmt: skip
    vision = _hf_tower(cfg.vision) | {
        "image_size": cfg.image_size, "patch_size": cfg.patch_size,
        "projection_dim": cfg.projection_dim,
    }  # fmt: skip
    return {
        "architectures": ["CLIPModel"], "model_type": "clip",
        "projection_dim": cfg.projection_dim, "text_config": text, "vision_config": vision,
        "torch_dtype": "float32",
    }  # fmt: skip


def image_pixels(images: Any, cfg: CLIPConfig, max_pixels: int) -> torch.Tensor:
    """CLIP's pixels: shorter side to ``image_size`` (bicubic), centre crop, CLIP mean/std."""
    from ..preprocess.image import clip_pixels

    return clip_pixels(images, size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std,
                       max_pixels=max_pixels)  # fmt: skip


FAMILY = Family(
    name="clip",
    config_class=CLIPConfig,
    model_class=CLIP,
    describes="a CLIP weight file",
    provider_argument="clip_model",
    modalities=("image", "text"),
    image_pixels=image_pixels,
    embedding_dim=lambda cfg: cfg.projection_dim,
    hf=Source(
        names=("clip",),
        architectures={"CLIPModel": "clip"},
        config=hf_config,
        name_map=lambda cfg: HF_MAP,
        export_config=hf_export_config,
    ),
    presets={"clip-vit-b-32": _clip_vit_b_32()},
)
