"""One training loop for both phases: stages, objectives and callbacks.

A stage sets which parts learn (``Stage.train``) and what is minimised:
``align_weight * mean over pairs of loss(z_a, z_b, valid=has_a & has_b)`` plus
``report_weight * LM cross-entropy of the report`` (phase 2, ``report.ReportObjective``).
Encoders and the LLM never learn: features come from the cache and the LLM's parameters are frozen.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .config import LossConfig, Stage
from .evaluate import drop_modalities
from .features import Features
from .heads import AlignModel, save_checkpoint
from .losses import MemoryQueue, barlow_twins, info_nce, vicreg

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    stage: Stage
    epoch: int = 0
    train_loss: float = math.nan
    val_loss: float = math.nan
    best: float = math.inf
    improved: bool = False
    stop: bool = False
    history: list[dict] = field(default_factory=list)


class Callback:
    """Hooks of the loop; override what you need."""

    def on_stage_start(self, trainer: Trainer, state: TrainState) -> None: ...

    def on_epoch_end(self, trainer: Trainer, state: TrainState) -> None: ...


class EarlyStopping(Callback):
    """Stop a stage when the held-out loss has not improved for ``stage.patience`` epochs."""

    def on_stage_start(self, trainer, state):
        self.waited = 0

    def on_epoch_end(self, trainer, state):
        self.waited = 0 if state.improved else self.waited + 1
        if state.stage.patience and self.waited >= state.stage.patience:
            log.info("stage %s: early stop at epoch %d", state.stage.name, state.epoch)
            state.stop = True


class Checkpoint(Callback):
    """Write the model to ``path`` whenever the monitored loss improves (and after each stage)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer, state):
        if state.improved:
            save_checkpoint(self.path, trainer.model)


class MetricsLog(Callback):
    """Append one JSON line per epoch to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, trainer, state):
        with self.path.open("a") as f:
            f.write(json.dumps(state.history[-1]) + "\n")


class Progress(Callback):
    def on_epoch_end(self, trainer, state):
        log.info("%s", state.history[-1])


class Objective:
    """The loss of one batch under a stage."""

    def __init__(self, loss: LossConfig, report=None) -> None:
        self.loss = loss
        self.report = report
        self.queues: dict[tuple[str, str], MemoryQueue] = {}

    def pair_loss(self, model: AlignModel, za, zb, valid, labels, pair) -> torch.Tensor:
        cfg = self.loss
        if cfg.name == "vicreg":
            return vicreg(za, zb, valid=valid)
        if cfg.name == "barlow_twins":
            return barlow_twins(za, zb, valid=valid)
        t = model.temperature() if cfg.learnable_temperature else cfg.temperature
        queue = self.queues.get(pair) if cfg.queue_size else None
        if cfg.queue_size and queue is None:
            queue = self.queues[pair] = MemoryQueue(cfg.queue_size, za.shape[1])
        loss = info_nce(
            za, zb, valid=valid, temperature=t, decoupled=cfg.decoupled,
            hard_negative_beta=cfg.hard_negative_beta,
            queue=queue.tensors() if queue is not None and not cfg.supervised else None,
            labels=labels if cfg.supervised else None,
        )  # fmt: skip
        if queue is not None and model.training:
            queue.push(za, zb, valid)
        return loss

    def __call__(self, model: AlignModel, batch: dict, stage: Stage) -> torch.Tensor:
        z = model.embed(batch["vectors"])
        total = z[next(iter(z))].sum() * 0.0
        if stage.align_weight > 0:
            losses = [
                self.pair_loss(model, z[a], z[b], batch["present"][a] & batch["present"][b],
                               batch["labels"], (a, b))
                for a, b in stage.pairs
            ]  # fmt: skip
            total = total + stage.align_weight * torch.stack(losses).mean()
        if stage.reports:
            if self.report is None:
                raise InputError(f"stage {stage.name!r} writes reports but no LLM objective is set")
            total = total + stage.report_weight * self.report(model, z, batch)
        return total


def to_batch(features: Features, labels: np.ndarray | None = None) -> dict:
    return {
        "ids": features.ids,
        "vectors": {m: torch.from_numpy(v) for m, v in features.vectors.items()},
        "present": {m: torch.from_numpy(v) for m, v in features.present.items()},
        "labels": None if labels is None else torch.from_numpy(labels),
    }


class Trainer:
    """Runs stages over cached features; ``labels`` (N,) int per training row (-1: none)."""

    def __init__(self, model, objective, train, held=None, *, labels=None, held_labels=None,
                 batch_size=32, seed=0, callbacks=()) -> None:  # fmt: skip
        self.model, self.objective = model, objective
        self.train, self.held = train, held
        self.labels, self.held_labels = labels, held_labels
        self.batch_size, self.callbacks = batch_size, list(callbacks)
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    def _freeze_all_but(self, stage: Stage) -> list[torch.nn.Parameter]:
        for p in self.model.parameters():
            p.requires_grad_(False)
        groups = self.model.parameter_groups()
        params = [p for name in stage.train for p in groups.get(name, [])]
        for p in params:
            p.requires_grad_(True)
        return params

    def _epoch(self, stage: Stage, optimizer) -> float:
        self.model.train()
        order = self.rng.permutation(len(self.train.ids))
        losses, size = [], stage.batch_size or self.batch_size
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            labels = None if self.labels is None else self.labels[rows]
            part = self.train.subset(rows)
            if stage.modality_dropout:
                seed = int(self.rng.integers(2**31))
                part = drop_modalities(part, stage.modality_dropout, seed)
            loss = self.objective(self.model, to_batch(part, labels), stage)
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    @torch.no_grad()
    def evaluate(self, stage: Stage) -> float:
        if self.held is None or not self.held.ids:
            return math.nan
        self.model.eval()
        batch = to_batch(self.held, self.held_labels)
        return float(self.objective(self.model, batch, stage))

    def run_stage(self, stage: Stage) -> TrainState:
        params = self._freeze_all_but(stage)
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=1e-4)
        state = TrainState(stage)
        for cb in self.callbacks:
            cb.on_stage_start(self, state)
        for epoch in range(1, stage.epochs + 1):
            state.epoch, state.train_loss = epoch, self._epoch(stage, optimizer)
            state.val_loss = self.evaluate(stage)
            monitored = state.train_loss if math.isnan(state.val_loss) else state.val_loss
            state.improved = monitored < state.best
            state.best = min(state.best, monitored)
            state.history.append({"stage": stage.name, "epoch": epoch,
                                  "train_loss": state.train_loss, "val_loss": state.val_loss})  # fmt: skip
            for cb in self.callbacks:
                cb.on_epoch_end(self, state)
            if state.stop:
                break
        return state

    def fit(self, stages) -> list[TrainState]:
        return [self.run_stage(stage) for stage in stages]
