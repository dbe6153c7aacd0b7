"""The training config: one frozen dataclass read from a TOML file; stages are a list in it.

```toml
dataset = "records.jsonl"        # paths are relative to this file
cache = "features"               # feature cache folder
out = "runs/align"               # checkpoints and metrics
[models]
text = "minilm.parquet"
image = "mobilenet-v2.parquet"
audio = "whisper-base.parquet"
llm = "smollm2.parquet"          # only for stages with report_weight > 0
[loss]
name = "info_nce"                # info_nce | vicreg | barlow_twins
decoupled = false
[[stages]]
name = "warmup"
epochs = 20
pairs = [["text", "image"]]
train = ["text", "image"]
[[stages]]
name = "report"
epochs = 5
align_weight = 0.0
report_weight = 1.0
train = ["projector"]
```
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import check_choice
from ..errors import ConfigError, ModelFileNotFoundError
from .heads import MODALITIES
from .losses import LOSSES

GROUPS = (*MODALITIES, "temperature", "projector")


@dataclass(frozen=True)
class LossConfig:
    """Options of the alignment loss (``losses.info_nce`` / ``vicreg`` / ``barlow_twins``)."""

    name: str = "info_nce"
    temperature: float = 0.07
    learnable_temperature: bool = False
    decoupled: bool = False
    hard_negative_beta: float = 0.0
    queue_size: int = 0
    supervised: bool = False  # positives = same label

    def __post_init__(self) -> None:
        check_choice("loss.name", self.name, LOSSES)
        if not self.temperature > 0 or self.hard_negative_beta < 0 or self.queue_size < 0:
            raise ConfigError(
                "loss.temperature must be > 0, hard_negative_beta and queue_size >= 0; got "
                f"{self.temperature}, {self.hard_negative_beta}, {self.queue_size}"
            )


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: which pairs are aligned, which parts learn, for how long."""

    name: str
    epochs: int
    lr: float = 1e-3
    pairs: tuple[tuple[str, str], ...] = ()
    train: tuple[str, ...] = ()
    align_weight: float = 1.0
    report_weight: float = 0.0
    patience: int = 0  # early stopping on the held-out loss; 0 = off
    batch_size: int = 0  # 0: the config's batch_size
    # each training (record, modality) hidden with this probability in every batch (a record
    # keeps one), so heads and projector learn to work, and <MISSING> tokens get trained, without it
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1 or not self.lr > 0:
            raise ConfigError(f"stage {self.name!r}: epochs must be >= 1 and lr > 0")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(
                f"stage {self.name!r}: modality_dropout must be in [0, 1), got {self.modality_dropout}"
            )
        for a, b in self.pairs:
            if a not in MODALITIES or b not in MODALITIES or a == b:
                raise ConfigError(f"stage {self.name!r}: pair ({a!r}, {b!r}) is not two modalities")
        unknown = sorted(set(self.train) - set(GROUPS))
        if unknown or not self.train:
            raise ConfigError(
                f"stage {self.name!r}: train={list(self.train)} must name parts from {list(GROUPS)}"
            )
        if self.align_weight > 0 and not self.pairs:
            raise ConfigError(f"stage {self.name!r}: align_weight > 0 needs pairs to align")
        if self.align_weight <= 0 and self.report_weight <= 0:
            raise ConfigError(f"stage {self.name!r}: set align_weight or report_weight > 0")

    @property
    def reports(self) -> bool:
        return self.report_weight > 0


@dataclass(frozen=True)
class AlignConfig:
    dataset: Path
    cache: Path
    out: Path
    models: dict[str, Path]
    stages: tuple[Stage, ...]
    loss: LossConfig = LossConfig()
    batch_size: int = 32
    holdout: float = 0.25
    seed: int = 0
    workers: int = 2
    dim: int = 512
    hidden: int = 1024
    prompt_tokens: int = 4
    emotions: tuple[str, ...] = ()
    behaviours: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("the config has no [[stages]]; add at least one")
        unknown = sorted(set(self.models) - {*MODALITIES, "llm"})
        if unknown:
            raise ConfigError(f"[models] has unknown keys {unknown}; use {[*MODALITIES, 'llm']}")
        if {"image", "video"} <= set(self.models) and self.models["image"] != self.models["video"]:
            raise ConfigError(
                "[models] names different files for image and video; video frames go through the "
                "image encoder, so name the same file for both (or give only video)"
            )
        if any(s.reports for s in self.stages) and "llm" not in self.models:
            raise ConfigError("a stage has report_weight > 0 but [models] names no llm file")
        for s in self.stages:
            used = {m for pair in s.pairs for m in pair} | (set(s.train) & set(MODALITIES))
            if used - set(self.models):
                raise ConfigError(
                    f"stage {s.name!r} uses {sorted(used - set(self.models))} but [models] has no "
                    "encoder for it; add the model file or drop the modality from the stage"
                )
        if not 0 <= self.holdout < 1 or self.batch_size < 2 or self.workers < 1:
            raise ConfigError("holdout must be in [0, 1), batch_size >= 2, workers >= 1")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.models)


def _build(cls, data: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def parse_config(data: dict[str, Any], root: Path) -> AlignConfig:
    """An ``AlignConfig`` from a parsed TOML dict; relative paths are taken from ``root``."""
    data = dict(data)
    stages = tuple(
        _build(Stage, {**s, "pairs": tuple(tuple(p) for p in s.get("pairs", ())),
                       "train": tuple(s.get("train", ()))}, f"stage {i}")
        for i, s in enumerate(data.pop("stages", ()))
    )  # fmt: skip
    loss = _build(LossConfig, data.pop("loss", {}), "[loss]")
    for key in ("dataset", "cache", "out"):
        if key not in data:
            raise ConfigError(f'the config needs `{key} = "..."` (a path)')
        data[key] = root / data[key]
    data["models"] = {k: root / v for k, v in data.get("models", {}).items()}
    for key in ("emotions", "behaviours"):
        data[key] = tuple(data.get(key, ()))
    return _build(AlignConfig, {**data, "stages": stages, "loss": loss}, "config")


def load_config(path: str | os.PathLike) -> AlignConfig:
    """Read a TOML training config (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"no config file at {path}; pass a TOML file (docs/alignment.md)"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}; fix the line it names") from e
    return parse_config(data, path.parent)
