"""MultimodalStorage: one Delta Lake table per modality, with exact cosine search."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from ..errors import (
    IdNotFoundError,
    InvalidEmbeddingError,
    SchemaMismatchError,
)
from . import cache, checksums, delta, layout
from . import schema as sc
from .ingest import IngestMixin
from .lookup import SearchMixin
from .models import ModelInfo, model_info, model_paths
from .state import FileGone, TableState
from .where import is_in, select

log = logging.getLogger(__name__)

WRITE_THREADS = os.cpu_count() or 1
MIN_FILE_ROWS = 1 << 15  # a batch is split into parallel files of at least 32k rows
RETRIES = 5  # reads retried on a newer version when a vacuum removed a file meanwhile


class MultimodalStorage(IngestMixin, SearchMixin):
    """Embedding tables per modality, each a Delta Lake table under ``path/<modality>/``.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory (made when missing or empty, unless ``create=False``).
    text_model, clip_model, audio_model : path, optional
        The weight files that embed each modality: ``add_texts`` / ``add_files`` and text, image
        or audio queries use them, and every row records its model's name from the file.
    provider : object, optional
        The embedding provider to use instead of one built from the model files.
    dtype, backend : the compute options of the provider built from the model files
        (``MultimodalEmbeddingProvider``): "float32" (exact, default), "bfloat16" or "int8";
        "torch" (default) or "onnxruntime". Vectors of other modes are close to float32's
        (cosine >= 0.99), not equal: a table and its queries may mix them.

    Examples
    --------
    >>> store = MultimodalStorage("embeddings", text_model="minilm.parquet")  # doctest: +SKIP
    >>> store.add_texts(["a cat", "a dog"], ids=["c", "d"], metadata=[{"lang": "en"}] * 2)
    >>> store.search("kitten", k=1, where="metadata.lang = 'en'")[0].id  # doctest: +SKIP
    'c'
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, provider: Any = None,
                 text_model=None, clip_model=None, audio_model=None, dtype: str = "float32",
                 backend: str = "torch") -> None:  # fmt: skip
        self.path = Path(path)
        layout.open_or_create(self.path, create)
        given = model_paths(text_model=text_model, clip_model=clip_model, audio_model=audio_model)
        self._models = {**layout.remembered_models(self.path), **given}
        self._provider = provider
        self._compute = {"dtype": dtype, "backend": backend}  # of the provider built at first use
        self._lock = delta.WriteLock(self.path)
        self._sync_lock = threading.RLock()
        self._tables: dict[str, DeltaTable] = {}
        self._states: dict[str, TableState] = {}
        self._synced: dict[str, int] = {}  # modality -> the Delta version its state shows
        self._checksums: dict[str, tuple[int, dict[str, str]]] = {}
        self._hashed: dict[str, str] = {}  # data file -> xxh3-64 its writer took, until recorded
        self._ann: dict[str, Any] = {}  # modality -> AnnIndex, once built or loaded
        self.refresh()

    def __repr__(self) -> str:
        return f"MultimodalStorage({str(self.path)!r}, tables={list(self.modalities)})"

    def __len__(self) -> int:
        return self.count()

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities that have a table."""
        return tuple(sorted(self._tables))

    @property
    def provider(self) -> Any:
        """The embedding provider (built from the model files at first use)."""
        if self._provider is None and self._models:
            from ..provider import MultimodalEmbeddingProvider

            paths = {"text_model": self._models.get("text"), "clip_model": self._models.get("image"),
                     "audio_model": self._models.get("audio")}  # fmt: skip
            if paths["text_model"] == paths["clip_model"]:
                paths["text_model"] = None
            self._provider = MultimodalEmbeddingProvider(**paths, **self._compute)
        return self._provider

    def table(self, modality: str) -> DeltaTable:
        """The ``deltalake.DeltaTable`` of one modality, at the latest version."""
        self.refresh()
        if sc.check_modality(modality) not in self._tables:
            raise IdNotFoundError(f"the store has no {modality} table; it has {self.modalities}")
        return DeltaTable(str(self.path / modality))

    def version(self, modality: str) -> int:
        """The Delta version of one modality's table that this object reads."""
        return self.table(modality).version()

    # -- reading ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Move every table to its latest version, reading only data files not read yet."""
        with self._sync_lock:
            for modality in sc.MODALITIES:
                self._sync(modality)

    def _sync(self, modality: str) -> None:
        for _ in range(RETRIES - 1):
            try:
                return self._sync_once(modality)
            except FileGone:  # vacuumed meanwhile: a newer version does not list it
                log.debug(
                    "a data file of %s went while reading; moving to the newer version", modality
                )
        return self._sync_once(modality)

    def _sync_once(self, modality: str) -> None:
        table = self._tables.get(modality)
        if table is None:
            table = delta.open_table(self.path / modality)
            if table is None:
                return
            self._tables[modality] = table
        elif self._synced.get(modality) == table.version() and not delta.has_next(
            table, self.path / modality
        ):
            return  # one stat instead of listing the log: searches call this every time
        else:
            delta.update(table)
        files = pa.table(table.get_add_actions(flatten=False)).column("path").to_pylist()
        state = self._states.get(modality)
        if state is None or state.wants_rebuild(files):
            state = TableState(self.path / modality, int(delta.config_of(table).get("dim", 0)))
        state.sync(files)
        self._states[modality] = state
        self._synced[modality] = table.version()

    def count(self, modality: str | None = None) -> int:
        """Live rows of one table, or of all."""
        self.refresh()
        names = [sc.check_modality(modality)] if modality else list(self._states)
        return sum(self._states[m].live_count for m in names if m in self._states)

    def get(self, ids, *, modality: str) -> pa.Table:
        """The rows with these ids (all columns), in the order asked."""
        ids = sc.check_ids(ids)
        rows = select(self.table(modality), is_in("id", ids)) if ids else pa.table({"id": []})
        missing = set(ids) - set(rows.column("id").to_pylist())
        if missing:
            raise IdNotFoundError(_missing(sorted(missing), modality, "get"))
        order = {i: n for n, i in enumerate(rows.column("id").to_pylist())}
        return rows.take([order[i] for i in ids])

    def stats(self) -> dict[str, Any]:
        """Per table: version, live rows, data files, bytes, model and dim."""
        self.refresh()
        out = {}
        for name, table in sorted(self._tables.items()):
            adds = pa.table(table.get_add_actions(flatten=False))
            config = delta.config_of(table)
            out[name] = {"version": table.version(), "rows": self._states[name].live_count,
                         "files": adds.num_rows, "bytes": int(pc.sum(adds["size_bytes"]).as_py() or 0),
                         "model": config.get("model"), "dim": int(config.get("dim", 0))}  # fmt: skip
        return out

    # -- writing ---------------------------------------------------------------------------------

    def add(
        self, ids, vectors, *, modality: str, model_file=None, sources=None, metadata=None
    ) -> int:
        """Append new rows; ids already in the table raise (use ``upsert``). Returns the version.

        ``model_file``: the weight file that made the vectors (default: the store's model for the
        modality); the ``model`` column and the table's model come from it.
        """
        return self._write(ids, vectors, modality, model_file, sources, metadata, upsert=False)

    def upsert(self, ids, vectors, *, modality: str, model_file=None, sources=None,
               metadata=None) -> int:  # fmt: skip
        """Like ``add``, but rows whose id is in the table are replaced (merge by id, one commit)."""
        return self._write(ids, vectors, modality, model_file, sources, metadata, upsert=True)

    def _write(self, ids, vectors, modality, model_file, sources, metadata, *, upsert) -> int:
        sc.check_modality(modality)
        model = self._model(modality, model_file)
        batch = sc.validate_batch(ids, vectors, sources, metadata)
        data = sc.batch_table(batch, modality=modality, model=model.name)
        with self._lock.held(), self._sync_lock:
            self._sync(modality)
            self._check_model(modality, model, batch.dim)
            state = self._states.get(modality)
            if upsert and state is not None and not state.live().keys().isdisjoint(batch.ids):
                delta.merge_by(self._tables[modality], data, "id")
            else:  # ids already live raise (checked while the files are written)
                self._append(modality, batch, data, model.config(batch.dim))
            self._sync(modality)
            self._record(modality)
            return self._tables[modality].version()

    def _append(
        self, modality: str, batch: sc.Batch, data: pa.Table, config: dict[str, str]
    ) -> None:
        """One commit of new data files, one per core for a large batch, written in parallel
        (write_deltalake writes one file at a time); ``write_deltalake`` only when the batch
        widens the schema (a new metadata key)."""
        if modality not in self._tables:
            delta.create(self.path / modality, data.schema, config)
            self._sync(modality)
        table = self._tables[modality]
        if not data.schema.equals(_schema(table)):
            self._check_taken(modality, batch.ids)
            delta.append(self.path / modality, data, None, operation="add")
            return
        parts = max(1, min(WRITE_THREADS, len(data) // MIN_FILE_ROWS))
        folder, state = self.path / modality, self._states[modality]

        def written(name: str, lo: int, hi: int, digest: str) -> None:  # in the writer's thread
            self._hashed[name] = digest
            state.written[name] = batch.ids[lo:hi]

        actions = delta.write_files(folder, data, parts, after=written,
                                    meanwhile=lambda: self._check_taken(modality, batch.ids))  # fmt: skip
        delta.commit_files(table, actions, data.schema, operation="add")

    def commit_files(self, modality: str, actions: list) -> int:
        """Commit data files that workers wrote with ``delta.write_files`` (one transaction).

        Their ids must be new to the table and unique, and their model the store's for the
        modality; otherwise nothing is committed (the files stay unlisted; ``vacuum`` removes
        them). A batch whose metadata adds keys first widens the schema (an empty commit).
        Returns the table version.
        """
        folder = self.path / sc.check_modality(modality)
        with self._lock.held(), self._sync_lock:
            self._sync(modality)
            ids, schema, dim = _files_content(folder, [a.path for a in actions])
            model = self._model(modality, None)
            self._check_model(modality, model, dim)
            sc.check_unique(ids)
            self._check_taken(modality, ids)
            if modality not in self._tables:
                delta.create(folder, schema, model.config(dim))
                self._sync(modality)
            elif not set(schema.names) <= set(_schema(self._tables[modality]).names) or any(
                not _schema(self._tables[modality]).field(f.name).equals(f) for f in schema
            ):  # widen first: Delta commits files of the table's schema
                delta.append(folder, schema.empty_table(), None, operation="evolve")
                self._sync(modality)
            table = self._tables[modality]
            delta.commit_files(table, actions, _schema(table), operation="add")
            self._sync(modality)
            self._record(modality)
            return self._tables[modality].version()

    def _record(self, modality: str) -> None:
        """Checksum the data files and log entries committed since the last record (lock held)."""
        table_dir = self.path / modality
        size, known = self._checksums.get(modality, (-1, {}))
        if checksums.size(table_dir) != size:  # another writer recorded files meanwhile
            known = checksums.read(table_dir)
        try:
            checksums.record_new(table_dir, self._states[modality].live_files, known, self._hashed)
            self._checksums[modality] = (checksums.size(table_dir), known)
        except OSError as e:  # the commit stands; verify will only decode these files
            log.warning(
                "could not record checksums in %s (%s); the write is committed", modality, e
            )
        finally:  # hashes and ids of files that no commit took are no use
            self._hashed.clear()
            self._states[modality].written.clear()

    def _model(self, modality: str, model_file) -> ModelInfo:
        path = model_file if model_file is not None else self._models.get(modality)
        if path is None:
            raise SchemaMismatchError(
                f"no model file for the {modality} table: pass model_file= (the weight file that "
                "made the vectors), or open the store with text_model= / clip_model= / audio_model="
            )
        return model_info(path)

    def _check_model(self, modality: str, model: ModelInfo, dim: int | None) -> None:
        """The table's model must be ``model`` (and its dim ``dim``, unless None)."""
        if modality not in self._tables:
            return
        config = delta.config_of(self._tables[modality])
        if config.get("model_checksum") == model.checksum and dim in (
            None,
            int(config.get("dim", -1)),
        ):
            return
        raise SchemaMismatchError(
            f"the {modality} table holds {config.get('dim')}-d vectors of model "
            f"{config.get('model')!r} ({config.get('model_checksum')}); got "
            f"{dim or 'vectors'}-d of {model.name!r} ({model.checksum}); embed with the table's "
            "model file, or use another store"
        )

    def remember_models(self) -> None:
        """Record this store's model files in ``store.json``, so later opens (``search``) use them."""
        with self._lock.held():
            layout.remember_models(self.path, self._models)

    def _check_taken(self, modality: str, ids: list[str]) -> None:
        state = self._states.get(modality)
        live = state.live() if state is not None else {}
        if not live.keys().isdisjoint(ids):
            taken = [i for i in ids if i in live]
            raise InvalidEmbeddingError(
                f"{len(taken)} ids are already in the {modality} table (e.g. {taken[:5]}); use "
                "upsert() to replace them, or delete() them first"
            )

    def delete(self, ids, *, modality: str | None = None, missing_ok: bool = False) -> int:
        """Delete rows by id from one table (or every table); returns how many rows went.

        Ids found in no table raise ``IdNotFoundError`` unless ``missing_ok``.
        """
        ids = sc.check_ids(ids)
        names = [sc.check_modality(modality)] if modality else list(sc.MODALITIES)
        with self._lock.held(), self._sync_lock:
            self.refresh()
            found, deleted = set(), 0
            for name in (n for n in names if n in self._states):
                live = self._states[name].live()
                hit = [i for i in ids if i in live]
                if hit:
                    deleted += delta.delete_ids(self._tables[name], hit)
                    found.update(hit)
                    self._sync(name)
                    self._record(name)
            missing = [i for i in ids if i not in found]
            if missing and not missing_ok:
                raise IdNotFoundError(_missing(missing, modality, "delete"))
            return deleted

    def compact(self, modality: str | None = None) -> dict[str, Any]:
        """Rewrite each table's small files into large ones (Delta OPTIMIZE); returns metrics.

        Readers of older versions keep working: the old files stay until ``vacuum``.
        """
        names = [sc.check_modality(modality)] if modality else list(sc.MODALITIES)
        with self._lock.held(), self._sync_lock:
            self.refresh()
            out = {n: delta.compact(self._tables[n]) for n in names if n in self._tables}
            self.refresh()
            for name in out:
                self._record(name)
        return out

    def vacuum(self, *, retention_hours: float = 168) -> dict[str, list[str]]:
        """Remove files no version of the last ``retention_hours`` needs (and crash leftovers).

        A reader still reading a version older than that may fail; keep the default (7 days)
        unless no such reader exists.
        """
        with self._lock.held(), self._sync_lock:
            self.refresh()
            out = {n: delta.vacuum(t, retention_hours) for n, t in sorted(self._tables.items())}
            for name, state in self._states.items():
                cache.prune(self.path / name, set(state.live_files))
            return out


def _missing(ids: list[str], modality: str | None, verb: str) -> str:
    where = f"the {modality} table" if modality else "any table"
    return f"{len(ids)} ids to {verb} are not in {where} (e.g. {ids[:5]})"


def _schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def _files_content(folder: Path, files: list[str]) -> tuple[list[str], pa.Schema, int]:
    """(ids, unified Arrow schema, vector length) of uncommitted data files."""
    ids, schemas = [], []
    for file in files:
        schemas.append(pq.read_schema(folder / file).remove_metadata())
        ids += pq.read_table(folder / file, columns=["id"]).column("id").to_pylist()
    first = pq.ParquetFile(folder / files[0]).read_row_group(0, columns=["vector"])
    return ids, pa.unify_schemas(schemas), len(first.column("vector")[0])
