"""An independent MobileNetV2 reference with torchvision's module names (for parity tests).

Written from the paper (Sandler et al. 2018, Table 2) and torchvision's published layout
(``features.{i}`` of Conv2dNormActivation / InvertedResidual, ``classifier.1``), with stock
``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU6``: a checkpoint that loads into it with
``strict=True`` has exactly torchvision's architecture. torchvision itself does not import beside
this project's torch build (REFERENCE.md), so this stands in for it.
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


def conv_norm_act(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1):
    pad = (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers = [conv_norm_act(c_in, hidden)] if expand != 1 else []
        layers += [
            conv_norm_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class ReferenceMobileNetV2(nn.Module):
    def __init__(self, stages=STAGES, stem: int = 32, last: int = 1280, classes: int = 1000):
        super().__init__()
        features: list[nn.Module] = [conv_norm_act(3, stem, 3, 2)]
        c_in = stem
        for t, c, n, s in stages:
            for i in range(n):
                features.append(Block(c_in, c, s if i == 0 else 1, t))
                c_in = c
        features.append(conv_norm_act(c_in, last))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def random_reference(seed: int = 0, **kwargs) -> ReferenceMobileNetV2:
    """A reference with random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ReferenceMobileNetV2(**kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()
