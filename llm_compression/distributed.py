"""Embed a dataset of files into a store with Ray Data: workers embed and write data files, the
driver commits them to each Delta table in one transaction.

``map_batches`` runs an actor pool (one embedding provider per actor). Each actor picks every
file's modality from its content, embeds it exactly as ``MultimodalStorage.add_files`` does, and
writes the rows as uncommitted Parquet data files into the table's folder; it returns the file
names (and the inputs that failed, with their reasons). The driver then commits each table's
files in one Delta transaction. A task Ray retries writes new files under new names and only
the files of the attempt whose output the driver received are committed, so no input is stored
twice; files of failed attempts are never listed and ``vacuum`` removes them.

Needs the ``ray`` extra (``pip install 'llm_compression[ray]'``); see docs/scale-out.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, LLMCompressionError
from .tables import MultimodalStorage, delta
from .tables import schema as sc
from .tables.ingest import IngestReport, embed_group, group_files
from .tables.models import model_info

COLUMNS = ("kind", "modality", "path", "size", "mtime_ms", "stats", "input", "reason", "rows")


@dataclass
class DistributedReport:
    """``stored``: input -> rows; ``failed``: input -> reason; ``skipped``: inputs already stored;
    ``files``: data files committed per modality."""

    stored: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)


class _EmbedWriter:
    """A Ray actor: one provider, reused for every batch it gets."""

    def __init__(self, store: str, models: dict[str, str | None], text_field: str) -> None:
        from .provider import MultimodalEmbeddingProvider

        self.store, self.text_field = Path(store), text_field
        self.provider = MultimodalEmbeddingProvider(**models)
        self.names = {m: model_info(p).name for m, p in _model_by_modality(models).items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        report, out = IngestReport(), {c: [] for c in COLUMNS}
        paths = [Path(p) for p in batch["path"].tolist()]
        for kind, items in group_files(paths, report, {}).items():
            try:
                rows = embed_group(self.provider, kind, items, self.text_field, report)
                if rows is not None:
                    self._write(kind, rows, out)
                    report.count(rows.sources)
            except LLMCompressionError as e:
                report.failed.update({str(p): f"{type(e).__name__}: {e}" for p in items})
        for path, reason in report.failed.items():
            _row(out, kind="failed", input=path, reason=reason)
        for path, rows in report.stored.items():
            if path not in report.failed:
                _row(out, kind="stored", input=path, rows=rows)
        return out

    def _write(self, kind: str, rows, out: dict[str, list]) -> None:
        batch = sc.validate_batch(rows.ids, rows.vectors, rows.sources, rows.metadata)
        data = sc.batch_table(batch, modality=kind, model=self.names[kind])
        for action in delta.write_files(self.store / kind, data, 1):
            _row(out, kind="file", modality=kind, path=action.path, size=action.size,
                 mtime_ms=action.modification_time, stats=action.stats)  # fmt: skip


def _row(out: dict[str, list], **values: Any) -> None:
    defaults = {"size": 0, "mtime_ms": 0, "rows": 0}
    for column in COLUMNS:
        out[column].append(values.get(column, defaults.get(column, "")))


def _model_by_modality(models: dict[str, str | None]) -> dict[str, str]:
    out = {}
    if models.get("text_model") or models.get("clip_model"):
        out["text"] = models.get("text_model") or models["clip_model"]
    if models.get("clip_model"):
        out["image"] = models["clip_model"]
    if models.get("audio_model"):
        out["audio"] = models["audio_model"]
    return out


def embed_files(
    paths, store: str | os.PathLike, *, text_model=None, clip_model=None, audio_model=None,
    actors: int = 2, batch_size: int = 16, text_field: str = "text",
) -> DistributedReport:  # fmt: skip
    """Embed ``paths`` into ``store`` on the Ray cluster ``ray.init()`` connected to.

    Inputs whose ids are already in the store are skipped (use ``index`` to update them). Each
    table gets one commit. Returns what was stored, skipped and failed (failures are also
    recorded in the store's ``_files`` table).
    """
    import ray

    models = {"text_model": text_model, "clip_model": clip_model, "audio_model": audio_model}
    models = {k: str(Path(v).resolve()) if v else None for k, v in models.items()}
    if not any(models.values()):
        raise ConfigError("embed_files needs text_model=, clip_model= and/or audio_model=")
    target = MultimodalStorage(store, **models)
    report, files = DistributedReport(), [Path(p).resolve() for p in paths]
    todo = _not_stored(target, files, report)
    if todo:
        dataset = ray.data.from_items([{"path": str(p)} for p in todo])
        results = dataset.map_batches(
            _EmbedWriter, fn_constructor_kwargs={"store": str(target.path), "models": models,
                                                 "text_field": text_field},
            batch_size=batch_size, concurrency=actors, batch_format="numpy",
        ).take_all()  # fmt: skip
        _commit(target, results, report)
    return report


def _not_stored(store: MultimodalStorage, files: list[Path], report: DistributedReport):
    known = store.file_log()
    todo = [p for p in files if known.get(str(p), (None, None, None))[2] != "stored"]
    report.skipped = [str(p) for p in files if p not in todo]
    return todo


def _commit(store: MultimodalStorage, results: list[dict], report: DistributedReport) -> None:
    """One transaction per table for the files the workers wrote; then the ``_files`` log."""
    by_modality: dict[str, list] = {}
    for row in results:
        if row["kind"] == "file":
            action = delta.AddAction(row["path"], int(row["size"]), {}, int(row["mtime_ms"]),
                                     True, row["stats"])  # fmt: skip
            by_modality.setdefault(row["modality"], []).append(action)
        elif row["kind"] == "failed":
            report.failed[row["input"]] = row["reason"]
        else:
            report.stored[row["input"]] = int(row["rows"])
    for modality, actions in by_modality.items():
        store.commit_files(modality, actions)
        report.files[modality] = len(actions)
    ingest = IngestReport(stored=dict(report.stored), failed=dict(report.failed))
    store.record_files([Path(p) for p in [*report.stored, *report.failed]], ingest)
