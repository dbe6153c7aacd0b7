"""Learnable parts: projection heads to the shared unit sphere, the temperature, and the soft-prompt
projector with its learned ``<MISSING>`` tokens. Encoders and the LLM are frozen and live elsewhere.

Checkpoints are llm_compression weight files (family ``"align"``). The family is not a registered
model family (nothing here is an encoder), so they are read with ``WeightFile`` + ``decode_tensor``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_positive
from ..errors import ConfigError, FormatError, ModelFileNotFoundError
from ..weightfile import WeightFile, decode_tensor, read_metadata, write_model

FAMILY = "align"
MODALITIES = ("image", "audio", "text", "video")


@dataclass(frozen=True)
class AlignModelConfig:
    """Shapes of the learnable parts; written into the checkpoint and rebuilt from it.

    inputs : (modality, encoder feature length) pairs, e.g. (("text", 384), ("image", 1280)).
    models : (modality, encoder or LLM weight file path) pairs used to train it ("llm" for SmolLM2).
    labels : label names of the stored per-label prototypes (report evidence).
    """

    inputs: tuple[tuple[str, int], ...]
    dim: int = 512
    hidden: int = 1024
    prompt_tokens: int = 4
    llm_dim: int = 576
    models: tuple[tuple[str, str], ...] = ()
    labels: tuple[str, ...] = ()
    emotions: tuple[str, ...] = ()
    behaviours: tuple[str, ...] = ()
    family: str = field(default=FAMILY)

    def __post_init__(self) -> None:
        check_positive("AlignModelConfig", dim=self.dim, hidden=self.hidden, llm_dim=self.llm_dim)
        if self.family != FAMILY:
            raise ConfigError(f"AlignModelConfig.family must be {FAMILY!r}, got {self.family!r}")
        if not self.inputs:
            raise ConfigError("AlignModelConfig.inputs is empty; give (modality, dim) pairs")
        for name, dim in self.inputs:
            if name not in MODALITIES or not isinstance(dim, int) or dim < 1:
                raise ConfigError(
                    f"input ({name!r}, {dim!r}) is not (modality, positive dim); "
                    f"modalities are {list(MODALITIES)}"
                )

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @classmethod
    def from_dict(cls, data: dict) -> AlignModelConfig:
        pairs = {k: tuple(tuple(p) for p in data.get(k, ())) for k in ("inputs", "models")}
        tuples = {k: tuple(data.get(k, ())) for k in ("labels", "emotions", "behaviours")}
        return cls(**{**data, **pairs, **tuples})


class ProjectionHead(nn.Module):
    """Encoder feature (B, Din) -> unit vector (B, dim): Linear, GELU, Linear, L2-normalise."""

    def __init__(self, d_in: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)


class Temperature(nn.Module):
    """A learnable temperature ``exp(log_t)``, kept in [0.01, 1] (CLIP's clamp of its logit scale)."""

    def __init__(self, init: float = 0.07) -> None:
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_t.clamp(math.log(0.01), 0.0).exp()


class SoftPromptProjector(nn.Module):
    """Aligned vectors -> N soft-prompt tokens per modality; an absent modality gets its learned
    ``<MISSING>`` tokens (never zeros)."""

    def __init__(self, cfg: AlignModelConfig) -> None:
        super().__init__()
        n, c = cfg.prompt_tokens, cfg.llm_dim
        self.n_tokens, self.llm_dim = n, c
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(cfg.dim, c), nn.GELU(), nn.Linear(c, n * c))
             for m in cfg.modalities}
        )  # fmt: skip
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(n, c) * 0.02) for m in cfg.modalities}
        )

    def forward(self, aligned: dict[str, torch.Tensor], present: dict[str, torch.Tensor]):
        """(B, M * N, C) soft prompts; ``present[m]`` (B,) bool marks rows that have modality m."""
        parts = []
        for m, proj in self.proj.items():
            z = aligned[m]  # (B, dim)
            tokens = proj(z).view(z.shape[0], self.n_tokens, self.llm_dim)  # (B, N, C)
            keep = present[m].view(-1, 1, 1)
            parts.append(torch.where(keep, tokens, self.missing[m].expand_as(tokens)))
        return torch.cat(parts, dim=1)


class AlignModel(nn.Module):
    """Heads (one per modality), temperature, projector and per-label prototypes."""

    def __init__(self, cfg: AlignModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.heads = nn.ModuleDict(
            {m: ProjectionHead(d, cfg.hidden, cfg.dim) for m, d in cfg.inputs}
        )
        self.temperature = Temperature()
        self.projector = SoftPromptProjector(cfg)
        self.register_buffer("prototypes", torch.zeros(max(len(cfg.labels), 1), cfg.dim))

    def embed(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encoder features by modality -> unit vectors (B, dim) by modality."""
        return {m: self.heads[m](x) for m, x in features.items() if m in self.heads}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Names a stage's ``train`` list may use: each modality, "temperature", "projector"."""
        groups = {m: list(h.parameters()) for m, h in self.heads.items()}
        groups["temperature"] = list(self.temperature.parameters())
        groups["projector"] = list(self.projector.parameters())
        return groups


def save_checkpoint(path: str | os.PathLike, model: AlignModel, *, sources=None) -> Path:
    """Write ``model`` as a float32 weight file (atomic)."""
    tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return write_model(path, tensors, config=model.config, dtype="float32", sources=sources)


def load_checkpoint(path: str | os.PathLike) -> AlignModel:
    """Rebuild an ``AlignModel`` from a checkpoint written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"no alignment checkpoint at {path}; train one with `llm-compression align train CONFIG`"
        )
    meta = read_metadata(path)
    if meta.family != FAMILY:
        raise FormatError(
            f"{path} is a {meta.family!r} weight file, expected an alignment checkpoint "
            f"(family {FAMILY!r}); pass the file written by `llm-compression align train`"
        )
    model = AlignModel(AlignModelConfig.from_dict(meta.config))
    file = WeightFile(path)
    state = {name: torch.from_numpy(decode_tensor(file, name).copy()) for name in file.tensors}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(
            f"{path} does not match its config: missing {missing}, unexpected {unexpected}; "
            "retrain or pass the checkpoint this code version wrote"
        )
    return model
