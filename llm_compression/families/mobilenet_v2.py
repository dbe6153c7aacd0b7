"""MobileNetV2 (Sandler et al. 2018): the first convolutional family, an ImageNet image encoder.

Everything the project knows about it: its config, the network (conv + batch norm kept as
stored, inverted residual blocks, ReLU6), the map from torchvision's ``mobilenet_v2`` state dict
and the ImageNet preset with its 1,000 class names.

- ``encode_image(pixels)``: ``(B, 3, 224, 224)`` -> pooled features ``(B, 1280)`` (global average
  of the last 1x1 convolution's output), what the provider embeds.
- ``logits(pixels)``: ``(B, num_classes)``; ``classify(images, k=5)``: per image, the ``k``
  most likely ``(label, probability)`` pairs.

A torchvision checkpoint is a bare state dict that names no architecture: convert it with the
family given, ``llm-compression convert mobilenet_v2-b0353104.pth out.parquet --family
mobilenet_v2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_positive
from ..core.mlp import linear
from ..errors import ConfigError, ConversionError, InputError
from .maps import Target
from .methods import FamilyMethods
from .spec import Family, Source

# (expand ratio t, output channels c, repeats n, first stride s) per stage: the paper's Table 2.
IMAGENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                   (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MobileNetV2Config:
    """Width and stages of the network, its classifier and its input pipeline."""

    stages: tuple[tuple[int, int, int, int], ...] = IMAGENET_STAGES
    stem_channels: int = 32
    feature_dim: int = 1280  # channels of the last 1x1 convolution = the pooled feature length
    num_classes: int = 1000
    norm_eps: float = 1e-5
    image_size: int = 224  # the centre crop
    resize_size: int = 256  # the shorter side before cropping
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    labels: tuple[str, ...] = ()  # class names, index = class id ("" or empty: none stored)
    family: str = field(default="mobilenet_v2", init=False)

    def __post_init__(self) -> None:
        check_positive("MobileNetV2Config", stem_channels=self.stem_channels,
                       feature_dim=self.feature_dim, num_classes=self.num_classes,
                       image_size=self.image_size, resize_size=self.resize_size)  # fmt: skip
        object.__setattr__(self, "stages", tuple(tuple(s) for s in self.stages))
        if not self.stages or any(len(s) != 4 or min(s) < 1 for s in self.stages):
            raise ConfigError(
                f"stages must be (expand, channels, repeats, stride) rows of positive integers, "
                f"got {self.stages!r}"
            )
        if self.labels and len(self.labels) != self.num_classes:
            raise ConfigError(
                f"{len(self.labels)} labels for {self.num_classes} classes; store one name per "
                "class or none"
            )

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """(in channels, out channels, stride, expand ratio) of every inverted residual block."""
        out, c_in = [], self.stem_channels
        for t, c, n, s in self.stages:
            for i in range(n):
                out.append((c_in, c, s if i == 0 else 1, t))
                c_in = c
        return out


class ConvNorm(nn.Module):
    """Convolution (no bias) -> batch norm with stored statistics -> optional ReLU6."""

    def __init__(self, c_in: int, c_out: int, *, kernel=1, stride=1, groups=1, act=True, eps=1e-5):
        super().__init__()
        self.stride, self.groups, self.act, self.eps = stride, groups, act, eps
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                              bias=False, device="meta")  # fmt: skip
        self.conv.weight = nn.Parameter(torch.empty(c_out, c_in // groups, kernel, kernel))
        self.norm = BatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x), self.eps)
        return F.relu6(x) if self.act else x


class BatchNorm(nn.Module):
    """Inference batch norm: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.register_buffer("running_mean", torch.empty(channels))
        self.register_buffer("running_var", torch.empty(channels))

    def forward(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, eps)  # fmt: skip


class InvertedResidual(nn.Module):
    """1x1 expansion (when t > 1) -> 3x3 depthwise -> 1x1 linear projection, + x when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, eps: float) -> None:
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        if expand != 1:
            self.expand = ConvNorm(c_in, hidden, eps=eps)
        self.depthwise = ConvNorm(hidden, hidden, kernel=3, stride=stride, groups=hidden, eps=eps)
        self.project = ConvNorm(hidden, c_out, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if hasattr(self, "expand") else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


class MobileNetV2(FamilyMethods, nn.Module):
    """Stem -> inverted residual blocks -> 1x1 head -> global average pool -> classifier."""

    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__()
        self.config = config
        eps = config.norm_eps
        self.stem = ConvNorm(3, config.stem_channels, kernel=3, stride=2, eps=eps)
        self.blocks = nn.ModuleList(InvertedResidual(*b, eps) for b in config.blocks())
        last = config.blocks()[-1][1]
        self.head = ConvNorm(last, config.feature_dim, eps=eps)
        self.classifier = linear(config.feature_dim, config.num_classes, True)
        self.tokenizer = None

    @property
    def embedding_dim(self) -> int:
        return self.config.feature_dim

    def _check(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise InputError(
                f"pixels must be a (B, 3, {size}, {size}) tensor, got "
                f"{tuple(getattr(pixels, 'shape', ()))}; preprocess images with "
                "preprocess.image.imagenet_pixels"
            )
        return pixels.to(self.stem.conv.weight.dtype)  # the classifier may hold a packed weight

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` of normalised pixels ``(B, 3, S, S)``."""
        x = self.stem(self._check(pixels))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` (before softmax)."""
        return self.classifier(self.encode_image(pixels))

    def classify(self, images: Sequence[Any], *, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely ``(label, probability)`` pairs of each image, best first.

        ``images``: paths, PIL images or arrays, preprocessed as ``image_pixels`` does.
        """
        from ..preprocess.image import DEFAULT_MAX_PIXELS

        cfg = self.config
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg.num_classes:
            raise InputError(f"k must be an integer from 1 to {cfg.num_classes}, got {k!r}")
        pixels = image_pixels(images, cfg, DEFAULT_MAX_PIXELS)
        probs = self.logits(pixels).float().softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        names = cfg.labels or tuple(str(i) for i in range(cfg.num_classes))
        return [
            [(names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
            for row_p, row_i in zip(top.values, top.indices, strict=True)
        ]


def image_pixels(images: Any, cfg: MobileNetV2Config, max_pixels: int) -> torch.Tensor:
    """torchvision's ImageNet pixels: shorter side to ``resize_size`` (bilinear), centre crop."""
    from ..preprocess.image import imagenet_pixels

    return imagenet_pixels(images, size=cfg.image_size, resize=cfg.resize_size,
                           mean=cfg.image_mean, std=cfg.image_std, max_pixels=max_pixels)  # fmt: skip


# -- conversion from torchvision's state dict ------------------------------------------------------


def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in class-id order (torchvision's list)."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())


def _norm(src: str, dst: str) -> dict[str, Target]:
    """A BatchNorm2d's tensors; its ``num_batches_tracked`` training counter is not used."""
    out: dict[str, Target] = {f"{src}.{k}": f"{dst}.{k}" for k in _NORM_TENSORS}
    out[f"{src}.num_batches_tracked"] = None
    return out


_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _conv_norm(src: str, dst: str) -> dict[str, Target]:
    """torchvision's Conv2dNormActivation (``src.0`` conv, ``src.1`` norm) -> a ConvNorm."""
    return {f"{src}.0.weight": f"{dst}.conv.weight", **_norm(f"{src}.1", f"{dst}.norm")}


def torchvision_map(cfg: MobileNetV2Config) -> dict[str, Target]:
    """torchvision ``mobilenet_v2`` names -> canonical names, block by block.

    A block's ``conv`` holds [expand,] depthwise (each conv + norm + ReLU6), then the projection
    as a bare conv followed by a bare norm.
    """
    out = _conv_norm("features.0", "stem")
    for i, (_, _, _, expand) in enumerate(cfg.blocks(), start=1):
        src, dst = f"features.{i}.conv", f"blocks.{i - 1}"
        parts = ["expand", "depthwise"] if expand != 1 else ["depthwise"]
        for j, part in enumerate(parts):
            out.update(_conv_norm(f"{src}.{j}", f"{dst}.{part}"))
        n = len(parts)
        out[f"{src}.{n}.weight"] = f"{dst}.project.conv.weight"
        out.update(_norm(f"{src}.{n + 1}", f"{dst}.project.norm"))
    out.update(_conv_norm(f"features.{len(cfg.blocks()) + 1}", "head"))
    out["classifier.1.weight"] = "classifier.weight"
    out["classifier.1.bias"] = "classifier.bias"
    return out


def state_dict_config(shapes: dict[str, tuple[int, ...]], where: Path) -> MobileNetV2Config:
    """The config of a torchvision MobileNetV2 state dict (stem width, classes from its shapes)."""
    try:
        stem, classes = shapes["features.0.0.weight"][0], shapes["classifier.1.weight"]
    except KeyError as e:
        raise ConversionError(
            f"{where} is not a torchvision mobilenet_v2 state dict: no tensor {e.args[0]!r}; pass "
            "the checkpoint saved from torchvision.models.mobilenet_v2"
        ) from None
    labels = imagenet_labels() if classes[0] == 1000 else ()
    return MobileNetV2Config(stem_channels=stem, num_classes=classes[0], feature_dim=classes[1],
                             labels=labels)  # fmt: skip


FAMILY = Family(
    name="mobilenet_v2",
    config_class=MobileNetV2Config,
    model_class=MobileNetV2,
    describes="a MobileNetV2 image-classifier weight file",
    provider_argument="image_model",
    modalities=("image",),
    tasks=("classify",),
    tokenizer=False,
    image_pixels=image_pixels,
    embedding_dim=lambda cfg: cfg.feature_dim,
    state_dict=Source(names=(), config=state_dict_config, name_map=torchvision_map),
    presets={"mobilenet-v2-imagenet": MobileNetV2Config(labels=imagenet_labels())},
)
