"""Encoder features, computed once by worker processes and cached in Parquet.

The cache is a folder with one file per (modality, model file hash):
``<cache>/<modality>-<sha256[:16]>.parquet``, columns ``id`` (string), ``modality`` (string),
``model`` (the hash) and ``vector`` (``fixed_size_list<float32>[dim]``), zstd. A record's
feature is computed only when its id is not in that file yet; training reads the cache.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from .dataset import Record

log = logging.getLogger(__name__)
CHUNK = 8  # inputs per worker task
_PROVIDER = None  # one provider per worker process
PROVIDER_ARGS = {"text": "text_model", "image": "image_model", "audio": "audio_model"}


def file_hash(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def provider_kwargs(models: dict[str, Path]) -> dict[str, str]:
    kwargs = {PROVIDER_ARGS[m]: str(p) for m, p in models.items() if m in PROVIDER_ARGS}
    if "video" in models and "image_model" not in kwargs:
        kwargs["image_model"] = str(models["video"])
    return kwargs


def _init_worker(kwargs: dict[str, str], threads: int) -> None:
    global _PROVIDER
    import torch

    from ..provider import MultimodalEmbeddingProvider

    torch.set_num_threads(threads)
    _PROVIDER = MultimodalEmbeddingProvider(**kwargs)


def _encode(modality: str, inputs: list[str]) -> np.ndarray:
    p = _PROVIDER
    if modality == "text":
        return p.encode_batch(inputs)
    if modality == "image":
        return p.encode_image(inputs)
    if modality == "audio":
        return p.encode_audio(inputs)
    return np.stack([p.encode_video(path) for path in inputs])


@dataclass(frozen=True)
class Features:
    """Features of a list of records: per modality (N, D) float32 (zeros where missing) and a
    (N,) bool mask of the rows that have it."""

    ids: list[str]
    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    def subset(self, rows: Sequence[int]) -> Features:
        rows = np.asarray(rows, dtype=np.int64)
        return Features(
            [self.ids[i] for i in rows],
            {m: v[rows] for m, v in self.vectors.items()},
            {m: v[rows] for m, v in self.present.items()},
        )


def _cache_file(cache: Path, modality: str, model_hash: str) -> Path:
    return cache / f"{modality}-{model_hash}.parquet"


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    dim = table.schema.field("vector").type.list_size
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(-1, dim).astype(np.float32)
    return dict(zip(table.column("id").to_pylist(), vectors, strict=True))


def _write(path: Path, modality: str, model_hash: str, rows: dict[str, np.ndarray]) -> None:
    ids = sorted(rows)
    matrix = np.stack([rows[i] for i in ids]).astype(np.float32)
    vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
    table = pa.table({
        "id": pa.array(ids, pa.string()), "modality": pa.array([modality] * len(ids)),
        "model": pa.array([model_hash] * len(ids)), "vector": vector,
    })  # fmt: skip
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _compute(todo: dict[str, list[tuple[str, str]]], models, workers: int) -> dict:
    """{modality: {id: vector}} for the (id, input) pairs in ``todo``, in worker processes."""
    tasks = [
        (m, pairs[i : i + CHUNK]) for m, pairs in todo.items() for i in range(0, len(pairs), CHUNK)
    ]
    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in todo}
    if not tasks:
        return out
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive fork
    initargs = (provider_kwargs(models), threads)
    with ProcessPoolExecutor(workers, context, _init_worker, initargs) as pool:
        futures = [(m, chunk, pool.submit(_encode, m, [x for _, x in chunk])) for m, chunk in tasks]
        for m, chunk, future in futures:
            vectors = future.result()
            out[m].update({rid: v for (rid, _), v in zip(chunk, vectors, strict=True)})
    return out


def build_features(
    records: Sequence[Record],
    models: dict[str, Path],
    cache: str | os.PathLike,
    *,
    workers: int = 2,
) -> Features:
    """Features of ``records`` for every modality in ``models``, from the cache or computed."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    modalities = [m for m in ("image", "audio", "text", "video") if m in models]
    if not modalities:
        raise ConfigError("no encoder in [models]; name at least one of image, audio, text, video")
    hashes = {m: file_hash(models[m]) for m in modalities}
    cached = {m: _read(_cache_file(cache, m, hashes[m])) for m in modalities}
    todo = {
        m: [(r.id, r.inputs[m]) for r in records if r.has(m) and r.id not in cached[m]]
        for m in modalities
    }
    log.info("features to compute: %s", {m: len(v) for m, v in todo.items()})
    todo = {m: v for m, v in todo.items() if v}
    for m, rows in (_compute(todo, models, workers) if todo else {}).items():
        cached[m].update(rows)
        _write(_cache_file(cache, m, hashes[m]), m, hashes[m], cached[m])
    return _assemble(records, modalities, cached)


def _assemble(records, modalities, cached) -> Features:
    vectors, present = {}, {}
    for m in modalities:
        dim = len(next(iter(cached[m].values()))) if cached[m] else 1
        matrix = np.zeros((len(records), dim), np.float32)
        mask = np.zeros(len(records), bool)
        for i, r in enumerate(records):
            if r.has(m):
                matrix[i], mask[i] = cached[m][r.id], True
        vectors[m], present[m] = matrix, mask
    return Features([r.id for r in records], vectors, present)
