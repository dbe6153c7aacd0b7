"""MultimodalStorage: durable per-modality embedding tables with exact cosine search."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import (
    IdNotFoundError,
    InvalidEmbeddingError,
    SchemaMismatchError,
    StoreCorruptError,
    StoreNotFoundError,
)
from . import manifest as mf
from . import table as tb
from .query import DEFAULT_TABLES, as_query_matrix, encode, query_kind
from .search import SearchResult, normalize
from .state import Preloaded, TableState, unit_rows

log = logging.getLogger(__name__)


class MultimodalStorage:
    """Embedding tables per modality in a directory of immutable Parquet fragments.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory.
    create : bool
        Make a new store when ``path`` does not exist or is an empty directory (default True);
        otherwise a path that is not a store raises ``StoreNotFoundError``.
    provider : object, optional
        Anything with ``encode(text)`` / ``encode_image(image)`` / ``encode_audio(audio)`` returning
        numpy vectors; lets ``search`` take text, images and audio files as queries.

    Examples
    --------
    >>> store = MultimodalStorage("embeddings")
    >>> store.add(["a", "b"], vectors, modality="text", model="all-minilm-l6-v2")
    >>> store.search(vectors[0], k=1)[0]
    ('a', 1.0)
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, provider: Any = None):
        self.path = Path(path)
        self.provider = provider
        if not (self.path / mf.MANIFEST_DIR).is_dir():
            empty = not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))
            if not (create and empty):
                raise StoreNotFoundError(
                    f"{self.path} is not an embedding store (no {mf.MANIFEST_DIR}/ directory); pass "
                    "the directory of an existing store, or a new or empty one with create=True"
                )
            mf.init_store(self.path)
        for sub in (mf.DATA_DIR, mf.TMP_DIR):  # a store on read-only media stays readable
            with contextlib.suppress(OSError):
                (self.path / sub).mkdir(exist_ok=True)
        self._manifest = mf.Manifest(-1)
        self._states: dict[str, TableState] = {}
        self.refresh()

    def __repr__(self) -> str:
        return f"MultimodalStorage({str(self.path)!r}, version={self.version})"

    def __len__(self) -> int:
        return self.count()

    @property
    def version(self) -> int:
        """The manifest version this object reads (refreshed by every call)."""
        return self._manifest.version

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities that have a table."""
        return tuple(sorted(self._manifest.tables))

    # -- snapshots -------------------------------------------------------------------------------

    def refresh(self) -> int:
        """Move to the latest committed version, reading only fragments not read yet."""
        for _ in range(5):
            versions = mf.list_versions(self.path)
            if versions and versions[-1] == self._manifest.version:
                return self.version
            manifest = mf.read_manifest(self.path)
            try:
                self._sync(manifest, {})
                return self.version
            except tb.FragmentMissingError:
                if mf.list_versions(self.path)[-1] == manifest.version:
                    raise StoreCorruptError(
                        f"{self.path}: the live manifest v{manifest.version} names a fragment "
                        "that is missing; run `llm-compression storage verify` on the store, "
                        "then restore the file or `storage repair --drop-corrupt`"
                    ) from None
                # a compaction replaced the fragment meanwhile: read the newer version
        raise StoreCorruptError(f"{self.path}: could not read a stable version after 5 tries")

    def _sync(self, manifest: mf.Manifest, preloaded: Preloaded) -> None:
        states = {}
        for name, info in manifest.tables.items():
            state = self._states.get(name)
            if state is None or not state.fits(info):
                state = TableState(info)
            state.sync(self.path, info, preloaded)
            states[name] = state
        self._states, self._manifest = states, manifest

    # -- writes ----------------------------------------------------------------------------------

    def add(self, ids, vectors, *, modality: str, model: str, sources=None, metadata=None) -> int:
        """Append new rows; ids already in the table raise (use ``upsert``). Returns the version.

        Cost is proportional to the batch: one new fragment and one small manifest version.
        ``sources``: one uri/path (or None) per id; ``metadata``: one JSON-able dict (or None) per id.
        """
        return self._write(ids, vectors, modality, model, sources, metadata, upsert=False)

    def upsert(
        self, ids, vectors, *, modality: str, model: str, sources=None, metadata=None
    ) -> int:
        """Like ``add``, but rows whose id is already in the table are replaced (one commit)."""
        return self._write(ids, vectors, modality, model, sources, metadata, upsert=True)

    def _write(self, ids, vectors, modality, model, sources, metadata, *, upsert: bool) -> int:
        tb.check_modality(modality)
        if not isinstance(model, str) or not model:
            raise SchemaMismatchError(f"model must be a non-empty model id string, got {model!r}")
        batch = tb.validate_batch(ids, vectors, sources, metadata)
        self.refresh()
        self._check_schema(modality, model, batch)
        manifest, written, unit = self._commit_batch(batch, modality, model, upsert)
        bounds = np.cumsum([0, *(frag.rows for frag in written)]).tolist()
        preloaded = {
            frag.file: (batch.ids[a:b], unit[a:b])
            for frag, a, b in zip(written, bounds[:-1], bounds[1:], strict=True)
        }
        self._sync(manifest, preloaded)
        log.debug("%s %d rows to %s: version %d", manifest.operation, len(batch.ids), modality,
                  manifest.version)  # fmt: skip
        return manifest.version

    def _commit_batch(self, batch: tb.Batch, modality: str, model: str, upsert: bool):
        """Write the batch's fragments, then commit them in one new manifest version.

        The checks that read every id or value run while the fragments are written: the ids in
        this thread, the norms in the writer threads, which also normalise the search copy. A
        batch failing them is never committed, and its fragments are removed.
        """
        table = tb.batch_table(batch, modality=modality, model=model)
        unit = np.empty(batch.vectors.shape, np.float32)

        def normalise(start: int, stop: int) -> np.ndarray:
            return _unit_rows_into(batch.vectors[start:stop], unit[start:stop])

        def check_ids() -> None:
            tb.check_unique(batch)
            self._check_taken(modality, batch, upsert)

        with mf.locked(self.path, mf.WRITERS_LOCK, shared=True):
            written, squares = tb.write_fragments(
                self.path, table, modality, self.version + 1, then=normalise, meanwhile=check_ids
            )
            version = None  # the version being committed, once known
            try:
                tb.check_norms(np.concatenate(squares))
                with mf.locked(self.path, mf.COMMIT_LOCK):
                    manifest = self._next_manifest(batch, modality, model, upsert, written)
                    version = manifest.version
                    mf.commit_manifest(self.path, manifest)
            except BaseException:  # remove the fragments unless a manifest already names them
                if (
                    version is None
                    or not (self.path / mf.MANIFEST_DIR / mf.manifest_name(version)).exists()
                ):
                    for frag in written:
                        with contextlib.suppress(OSError):
                            (self.path / frag.file).unlink()
                raise
        return manifest, written, unit

    def _next_manifest(self, batch, modality, model, upsert, written) -> mf.Manifest:
        """The version adding ``written`` (call with the commit lock held)."""
        checked = self.version
        if self.refresh() != checked:  # another writer committed meanwhile
            self._check_schema(modality, model, batch)
            self._check_taken(modality, batch, upsert)
        tables = dict(self._manifest.tables)
        info = tables.get(modality) or mf.TableInfo(model, batch.vectors.shape[1])
        frags = list(info.fragments)
        if upsert:
            live = self._states[modality].live() if modality in self._states else {}
            rows = [live[i] for i in batch.ids if i in live]
            frags = self._tombstone(modality, frags, rows) if rows else frags
        tables[modality] = dataclasses.replace(info, fragments=(*frags, *written))
        return self._manifest.next(tables, "upsert" if upsert else "add")

    def _check_schema(self, modality: str, model: str, batch: tb.Batch) -> None:
        info = self._manifest.tables.get(modality)
        dim = batch.vectors.shape[1]
        if info is not None and (info.model, info.dim) != (model, dim):
            raise SchemaMismatchError(
                f"the {modality} table holds {info.dim}-d vectors of model {info.model!r}, got "
                f"{dim}-d vectors of model {model!r}; embed with {info.model!r}, or delete the "
                "table's rows and compact() before switching models"
            )

    def _check_taken(self, modality: str, batch: tb.Batch, upsert: bool) -> None:
        if upsert or modality not in self._states:
            return
        live = self._states[modality].live()
        if not live.keys().isdisjoint(batch.ids):  # a C loop; name the ids only when some are taken
            taken = [i for i in batch.ids if i in live]
            raise InvalidEmbeddingError(
                f"{len(taken)} ids are already in the {modality} table (e.g. {taken[:5]}); "
                "use upsert() to replace them, or delete() them first"
            )

    def _tombstone(
        self, modality: str, frags: list[mf.FragmentInfo], rows
    ) -> list[mf.FragmentInfo]:
        state = self._states[modality]
        by_fragment: dict[int, set[int]] = {}
        for row in rows:
            frag, local = state.locate(row)
            by_fragment.setdefault(frag, set()).add(local)
        for frag, local in by_fragment.items():
            deleted = tuple(sorted(local.union(frags[frag].deleted)))
            frags[frag] = dataclasses.replace(frags[frag], deleted=deleted)
        return frags

    def delete(self, ids: Sequence[str], *, modality: str | None = None, missing_ok=False) -> int:
        """Delete rows by id (from one table, or every table). Returns how many rows went.

        Rows are tombstoned in the manifest; ``compact`` removes them from the files.
        Ids found in no table raise ``IdNotFoundError`` unless ``missing_ok``.
        """
        ids = _id_list(ids)
        if modality is not None:
            tb.check_modality(modality)
        with mf.locked(self.path, mf.COMMIT_LOCK):
            self.refresh()
            names = [modality] if modality is not None else list(self._states)
            tables, found = dict(self._manifest.tables), set()
            for name in (n for n in names if n in self._states):
                live = self._states[name].live()
                rows = [live[i] for i in ids if i in live]
                found.update(i for i in ids if i in live)
                if rows:
                    frags = self._tombstone(name, list(tables[name].fragments), rows)
                    tables[name] = dataclasses.replace(tables[name], fragments=tuple(frags))
            missing = [i for i in ids if i not in found]
            if missing and not missing_ok:
                raise IdNotFoundError(_missing_message(missing, modality, "delete"))
            if not found:
                return 0
            before = sum(s.live_count for s in self._states.values())
            manifest = self._manifest.next(tables, "delete")
            mf.commit_manifest(self.path, manifest)
            self._sync(manifest, {})
            return before - sum(s.live_count for s in self._states.values())

    def compact(self) -> dict[str, int]:
        """Rewrite each table with several fragments or deleted rows into few fragments.

        Fragments hold up to ``table.PARALLEL_ROWS`` rows so that loading and writing use every core.

        Atomic: the new fragments are committed in one manifest version, and the old fragments are
        removed only afterwards. Tables left with no rows are dropped. Appenders wait meanwhile.
        """
        with mf.locked(self.path, mf.COMMIT_LOCK):
            self.refresh()
            old = self._manifest
            tables, preloaded = dict(old.tables), {}
            for name, info in old.tables.items():
                if _needs_compaction(info):
                    frags = self._rewrite(name, info, preloaded)
                    if frags:
                        tables[name] = dataclasses.replace(info, fragments=frags)
                    else:
                        del tables[name]
            if tables == old.tables:
                return {"version": old.version, "fragments_removed": 0, "fragments_written": 0}
            mf.crash_point("compact_written")
            manifest = old.next(tables, "compact")
            mf.commit_manifest(self.path, manifest)
            mf.crash_point("compact_committed")
            self._sync(manifest, preloaded)
            live = {f.file for t in tables.values() for f in t.fragments}
            gone = [f.file for t in old.tables.values() for f in t.fragments if f.file not in live]
            for file in gone:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / file).unlink()
                mf.crash_point("compact_removing")
        log.info("compacted %s: %d fragments -> %d", self.path, len(gone), len(preloaded))
        return {"version": manifest.version, "fragments_removed": len(gone),
                "fragments_written": len(preloaded)}  # fmt: skip

    def _rewrite(self, name: str, info: mf.TableInfo, preloaded: Preloaded):
        parts = []
        for frag in info.fragments:
            parts.append(tb.read_live(self.path, frag, model=info.model, dim=info.dim))
        full = pa.concat_tables(parts)
        if full.num_rows == 0:
            return ()
        written, _ = tb.write_fragments(self.path, full, name, self.version + 1)
        for frag, part in zip(written, _split(full, written), strict=True):
            preloaded[frag.file] = (part.column("id").to_pylist(), unit_rows(part.column("vector")))
        return tuple(written)

    # -- reads -----------------------------------------------------------------------------------

    def count(self, modality: str | None = None) -> int:
        """Live rows in one table, or in all."""
        self.refresh()
        if modality is not None:
            tb.check_modality(modality)
            return self._states[modality].live_count if modality in self._states else 0
        return sum(s.live_count for s in self._states.values())

    def stats(self) -> dict[str, Any]:
        """Version, and per table: model, dim, dtype, rows, deleted rows, fragments, bytes."""
        self.refresh()
        return {"path": str(self.path), "version": self.version,
                "tables": mf.describe(self._manifest)}  # fmt: skip

    def get(self, ids: Sequence[str], *, modality: str | None = None) -> pa.Table:
        """The rows of ``ids`` (all columns, in the order asked) from one table."""
        ids = _id_list(ids)
        self.refresh()
        name = self._one_table(modality, "get")
        state = self._states.get(name)
        live = state.live() if state else {}
        missing = [i for i in ids if i not in live]
        if missing:
            raise IdNotFoundError(_missing_message(missing, name, "get"))
        located = [state.locate(live[i]) for i in ids]
        parts, start, where = [], 0, {}
        for frag_no in sorted({f for f, _ in located}):
            wanted = sorted({r for f, r in located if f == frag_no})
            parts.append(
                tb.read_rows(self.path, state.fragments[frag_no], state.model, state.dim, wanted)
            )
            where.update({(frag_no, r): start + i for i, r in enumerate(wanted)})
            start += len(wanted)
        return pa.concat_tables(parts).take(pa.array([where[loc] for loc in located], pa.int64()))

    def scan(self, modality: str, *, filter=None, columns: Sequence[str] | None = None) -> pa.Table:
        """Live rows of a table matching a pyarrow compute expression, e.g.
        ``store.scan("image", filter=pc.field("source").isin(["a.jpg"]))``."""
        tb.check_modality(modality)
        self.refresh()
        info = self._manifest.tables.get(modality)
        if info is None:
            raise IdNotFoundError(f"the store has no {modality} table; tables: {self.modalities}")
        parts = []
        for frag in info.fragments:
            table = tb.read_live(self.path, frag, model=info.model, dim=info.dim)
            parts.append(_apply_filter(table, filter))
        table = pa.concat_tables(parts)
        return table.select(list(columns)) if columns else table

    def search(self, query, *, k: int = 10, modality: str | None = None, filter=None):
        """Exact top-``k`` rows by cosine similarity.

        ``query``: a vector (dim,) -> one ``SearchResult``; a batch (Q, dim) or a list -> a list of
        them. With a provider, text / an image / an audio file (or a list of them) also work.
        ``filter``: a pyarrow compute expression over the non-vector columns.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidEmbeddingError(f"k must be a positive integer, got {k!r}")
        self.refresh()
        kind = query_kind(query)
        batched = np.ndim(query) == 2 if kind == "vector" else isinstance(query, list | tuple)
        name = self._search_table(modality, kind)
        if name not in self._states:
            empty = SearchResult((), np.empty(0, np.float32))
            return [empty] * len(query) if batched else empty
        state = self._states[name]
        vectors = query if kind == "vector" else encode(self.provider, kind, query, name)
        queries = as_query_matrix(vectors, state.dim)
        allow = None
        if filter is not None:
            try:
                allow = state.filter_rows(self.path, filter)
            except (pa.ArrowException, TypeError) as e:
                raise InvalidEmbeddingError(_filter_message(filter, e)) from e
        hits = state.index.topk(queries, int(k), dead=state.dead, allow=allow)
        ids = state.ids
        results = [SearchResult(tuple(ids[r] for r in rows.tolist()), s) for rows, s in hits]
        return results if batched else results[0]

    def _search_table(self, modality: str | None, kind: str) -> str | None:
        if modality is not None:
            return tb.check_modality(modality)
        if kind == "vector":
            return self._one_table(None, "search")
        return next((n for n in DEFAULT_TABLES[kind] if n in self._states), None)

    def _one_table(self, modality: str | None, what: str) -> str | None:
        if modality is not None:
            return tb.check_modality(modality)
        if len(self._states) > 1:
            raise SchemaMismatchError(
                f"the store has several tables {self.modalities}; pass modality= to {what}"
            )
        return next(iter(self._states), None)


def _unit_rows_into(vectors: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Normalise ``vectors`` into ``out``; return their squared norms for ``tb.check_norms``."""
    with np.errstate(all="ignore"):  # NaN/inf/zero rows are reported by check_norms
        squares = np.einsum("ij,ij->i", vectors, vectors)
        normalize(vectors, squares, out=out)
    return squares


def _needs_compaction(info: mf.TableInfo) -> bool:
    small = sum(1 for f in info.fragments if f.rows < tb.PARALLEL_ROWS)
    return small > 1 or any(f.deleted for f in info.fragments)


def _split(table: pa.Table, frags: list[mf.FragmentInfo]) -> list[pa.Table]:
    starts = np.cumsum([0] + [f.rows for f in frags])
    return [table.slice(a, b - a) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _apply_filter(table: pa.Table, expression) -> pa.Table:
    if expression is None:
        return table
    try:
        return table.filter(expression)
    except (pa.ArrowException, TypeError) as e:
        raise InvalidEmbeddingError(_filter_message(expression, e)) from e


def _filter_message(expression, e: Exception) -> str:
    return (
        f"filter {expression} failed ({e}); write it with pyarrow.compute over the columns "
        "id, modality, model, source, created_at, metadata, e.g. pc.field('source') == 'a.jpg'"
    )


def _id_list(ids) -> list[str]:
    if isinstance(ids, str):
        ids = [ids]
    ids = list(ids)
    if not all(isinstance(i, str) for i in ids):
        raise InvalidEmbeddingError("ids must be strings; convert them with str() first")
    return ids


def _missing_message(missing: list[str], modality: str | None, what: str) -> str:
    where = f"the {modality} table" if modality else "any table"
    return (
        f"{len(missing)} ids to {what} are not in {where} (e.g. {missing[:5]}); "
        "check them with store.scan() or pass ids that were added"
    )
