"""End to end: train from a config, and write reports from a checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .config import AlignConfig
from .dataset import read_records, split
from .features import Features, build_features, file_hash, provider_kwargs
from .heads import AlignModel, AlignModelConfig, load_checkpoint, save_checkpoint
from .report import BEHAVIOURS, EMOTIONS, Pieces, ReportObjective, write_report
from .trainer import Checkpoint, EarlyStopping, MetricsLog, Objective, Progress, Trainer

log = logging.getLogger(__name__)


def _label_ids(records, labels: tuple[str, ...]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    return np.array([index.get(r.label, -1) for r in records], dtype=np.int64)


def _model_config(cfg: AlignConfig, feats: Features, labels) -> AlignModelConfig:
    llm_dim = 576
    if "llm" in cfg.models:
        from ..weightfile import read_metadata

        llm_dim = int(read_metadata(cfg.models["llm"]).config["body"]["dim"])
    return AlignModelConfig(
        inputs=tuple((m, int(feats.vectors[m].shape[1])) for m in cfg.modalities),
        dim=cfg.dim, hidden=cfg.hidden, prompt_tokens=cfg.prompt_tokens, llm_dim=llm_dim,
        models=tuple((k, str(Path(v).resolve())) for k, v in sorted(cfg.models.items())),
        labels=labels, emotions=cfg.emotions or EMOTIONS, behaviours=cfg.behaviours or BEHAVIOURS,
    )  # fmt: skip


def _report_objective(cfg: AlignConfig, stages, mcfg: AlignModelConfig, records):
    if not any(s.reports for s in stages):
        return None
    from ..loader import load_model

    llm = load_model(cfg.models["llm"])
    pieces = Pieces.build(llm.tokenizer, mcfg.emotions, mcfg.behaviours)
    targets = {
        r.id: (r.emotion, tuple(b for b in r.behaviours if b in mcfg.behaviours))
        for r in records
        if r.emotion in mcfg.emotions and any(b in mcfg.behaviours for b in r.behaviours)
    }
    if not targets:
        raise InputError("no record has an emotion and behaviours from the report's vocabulary")
    return ReportObjective(llm, pieces, targets)


@torch.no_grad()
def prototypes(model: AlignModel, feats: Features, label_ids: np.ndarray) -> torch.Tensor:
    """(L, dim) unit mean of every aligned vector of each label, over all present modalities."""
    model.eval()
    z = model.embed({m: torch.from_numpy(v) for m, v in feats.vectors.items()})
    out = torch.zeros_like(model.prototypes)
    for m, vectors in z.items():
        present = torch.from_numpy(feats.present[m])
        for i in range(len(model.config.labels)):
            rows = present & torch.from_numpy(label_ids == i)
            out[i] += vectors[rows].sum(dim=0)
    return torch.nn.functional.normalize(out, dim=-1)


def prepare(cfg: AlignConfig) -> tuple:
    """The dataset of ``cfg`` split and featurised: ``(records, (train, held) records, all
    features, (train, held) features, labels)``; features come from the cache when present."""
    records = read_records(cfg.dataset)
    train_r, held_r = split(records, cfg.holdout, cfg.seed)
    feats = build_features(records, {m: cfg.models[m] for m in cfg.modalities}, cfg.cache,
                           workers=cfg.workers)  # fmt: skip
    row = {rid: i for i, rid in enumerate(feats.ids)}
    parts = tuple(feats.subset([row[r.id] for r in part]) for part in (train_r, held_r))
    labels = tuple(sorted({r.label for r in records if r.label}))
    return records, (train_r, held_r), feats, parts, labels


def _selected(cfg: AlignConfig, names) -> tuple:
    """The stages of ``cfg`` named in ``names`` (all of them when None), in the config's order."""
    if names is None:
        return cfg.stages
    unknown = sorted(set(names) - {s.name for s in cfg.stages})
    if unknown:
        raise ConfigError(
            f"no stage named {unknown} in the config; its stages are {[s.name for s in cfg.stages]}"
        )
    return tuple(s for s in cfg.stages if s.name in names)


def _initial_model(cfg: AlignConfig, mcfg: AlignModelConfig, start, model) -> AlignModel:
    """Fresh heads (seeded), or ``model`` (read from checkpoint ``start``) when its shapes match."""
    if model is None:
        torch.manual_seed(cfg.seed)  # the heads' initial weights
        model = AlignModel(mcfg)
        model.temperature.log_t.data.fill_(float(np.log(cfg.loss.temperature)))
        return model
    shape = lambda c: (c.inputs, c.dim, c.hidden, c.prompt_tokens, c.llm_dim, c.labels)  # noqa: E731
    if shape(model.config) != shape(mcfg):
        raise ConfigError(
            f"checkpoint {start} has inputs/dim/hidden/prompt_tokens/llm_dim/labels "
            f"{shape(model.config)} but the config gives {shape(mcfg)}; start from a checkpoint "
            "trained with this config's models and sizes"
        )
    return model


def train(cfg: AlignConfig, *, start=None, stages=None) -> Path:
    """Run the stages of ``cfg`` (those named in ``stages``, default all), from fresh heads or
    from checkpoint ``start``; returns the final checkpoint ``<out>/align.parquet``."""
    todo = _selected(cfg, stages)
    resumed = None if start is None else load_checkpoint(start)  # fails before any feature work
    records, (train_r, held_r), feats, (train_f, held_f), labels = prepare(cfg)
    mcfg = _model_config(cfg, feats, labels)
    model = _initial_model(cfg, mcfg, start, resumed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "metrics.jsonl").unlink(missing_ok=True)
    callbacks = [Progress(), MetricsLog(cfg.out / "metrics.jsonl"), EarlyStopping(),
                 Checkpoint(cfg.out / "checkpoint.parquet")]  # fmt: skip
    trainer = Trainer(
        model, Objective(cfg.loss, _report_objective(cfg, todo, mcfg, records)), train_f, held_f,
        labels=_label_ids(train_r, labels), held_labels=_label_ids(held_r, labels),
        batch_size=cfg.batch_size, seed=cfg.seed, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(todo)
    model.prototypes.copy_(prototypes(model, train_f, _label_ids(train_r, labels)))
    sources = {Path(p).name: file_hash(p) for p in cfg.models.values()}
    return save_checkpoint(cfg.out / "align.parquet", model, sources=sources)


class Reporter:
    """Reports from a checkpoint: its encoders, heads, projector and LLM (paths in its config)."""

    def __init__(self, checkpoint: str | os.PathLike) -> None:
        from ..loader import load_model
        from ..provider import MultimodalEmbeddingProvider

        self.model = load_checkpoint(checkpoint).eval()
        models = {k: Path(v) for k, v in dict(self.model.config.models).items()}
        if "llm" not in models:
            raise ConfigError(
                f"{checkpoint} was trained without an LLM; add `llm = ...` to [models] and a "
                "stage with report_weight > 0, then train again"
            )
        self.provider = MultimodalEmbeddingProvider(**provider_kwargs(models))
        self.llm = load_model(models["llm"])
        cfg = self.model.config
        self.pieces = Pieces.build(self.llm.tokenizer, cfg.emotions, cfg.behaviours)

    def _features(self, image, audio, text, video) -> dict[str, torch.Tensor]:
        p, out = self.provider, {}
        if image is not None:
            out["image"] = p.encode_image([image])
        if audio is not None:
            out["audio"] = p.encode_audio([audio])
        if text is not None:
            out["text"] = p.encode_batch([text])
        if video is not None:
            out["video"] = p.encode_video(video)[None]
        return {m: torch.from_numpy(np.asarray(v, np.float32)) for m, v in out.items()}

    @torch.no_grad()
    def report(self, *, image=None, audio=None, text=None, video=None) -> dict:
        """The validated report dict of whichever inputs are given (at least one)."""
        feats = self._features(image, audio, text, video)
        unknown = sorted(set(feats) - set(self.model.config.modalities))
        if unknown:
            raise InputError(
                f"the checkpoint has no head for {unknown}; "
                f"it aligns {list(self.model.config.modalities)}"
            )
        return write_report(self.model, self.llm, self.pieces, self.model.embed(feats))
