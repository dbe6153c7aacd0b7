"""Search for ``MultimodalStorage``: query dispatch, filters, exact top-k, the optional ANN index,
and hits with their source and metadata."""

from __future__ import annotations

import bisect

import numpy as np

from ..errors import IdNotFoundError, InvalidEmbeddingError
from . import schema as sc
from .ann import AnnIndex, AnnParams
from .query import DEFAULT_TABLES, as_query_matrix, encode, query_kind
from .search import Hit, SearchResult
from .state import FileGone, Snapshot, TableState
from .where import matching_ids

RETRIES = 5  # a search is retried on a newer version when a vacuum removed a file meanwhile


class SearchMixin:
    """Needs ``refresh``, ``_states``, ``_tables``, ``_lock``, ``provider``, ``_model``,
    ``_check_model`` and ``path`` from ``MultimodalStorage``."""

    def search(self, query, *, k: int = 10, modality: str | None = None, where=None,
               ann: bool = False, kernel: str = "auto") -> SearchResult | list[SearchResult]:  # fmt: skip
        """Top-``k`` rows by cosine similarity; a batch of queries gives a list of results.

        ``query``: a vector or (Q, dim) matrix, text, an image (PIL or file) or an audio file
        (embedded by the store's provider). ``where``: a SQL predicate over the table's columns
        (``"source LIKE '%.txt' AND metadata.lang = 'en'"``) or a dict of equalities
        (``{"lang": "en"}``; keys are columns or metadata keys). ``ann``: use the HNSW index
        that ``build_index`` made (approximate recall, exact scores); default exact.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidEmbeddingError(f"k must be a positive int, got {k!r}")
        kind = query_kind(query)
        for attempt in range(RETRIES):
            try:
                return self._search(query, kind, int(k), modality, where, ann, kernel)
            except FileGone:
                if attempt == RETRIES - 1:
                    raise

    def _search(self, query, kind, k, modality, where, ann, kernel):
        self.refresh()
        name = self._pick(kind, modality)
        state = self._states[name]
        if kind != "vector" and self._provider is None:  # the query model must be the table's
            self._check_model(name, self._model(name, None), None)
        raw = query if kind == "vector" else encode(self.provider, kind, query, name)
        queries = as_query_matrix(raw, state.dim)
        allow = self._allowed(name, where) if where is not None else None
        snap = state.snapshot()
        if ann:
            found = self._ann_topk(name, state, snap, queries, k, allow, kernel)
        else:
            found = snap.index.topk(queries, k, dead=snap.dead, allow=allow, kernel=kernel)
        results = [self._result(state, snap, rows, scores) for rows, scores in found]
        single = kind != "vector" and not isinstance(query, list | tuple)
        single = single or (kind == "vector" and np.asarray(query).ndim == 1)
        return results[0] if single else results

    def _pick(self, kind: str, modality: str | None) -> str:
        if modality is not None:
            if sc.check_modality(modality) not in self._states:
                raise IdNotFoundError(
                    f"the store has no {modality} table; it has {self.modalities}"
                )
            return modality
        if not self._states:
            raise IdNotFoundError(f"the store {self.path} has no tables yet: add rows first")
        names = [m for m in DEFAULT_TABLES.get(kind, ()) if m in self._states]
        if kind == "vector" and len(self._states) == 1:
            names = list(self._states)
        if not names:
            raise InvalidEmbeddingError(
                f"cannot tell which table a {kind} query searches (tables: {self.modalities}); "
                "pass modality="
            )
        return names[0]

    def _allowed(self, name: str, where) -> np.ndarray:
        ids = matching_ids(self._tables[name], where, name).to_pylist()
        live = self._states[name].live()
        rows = [row for i in ids if (row := live.get(i)) is not None]  # a writer may be syncing
        return np.sort(np.array(rows, np.int64))

    def _result(self, state: TableState, snap: Snapshot, rows: np.ndarray, scores: np.ndarray):
        hits = []
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            f = bisect.bisect_right(snap.starts, row) - 1
            attrs, i = state.attributes(snap.files[f]), row - snap.starts[f]
            hits.append(
                Hit(snap.ids[row], score, _cell(attrs, "source", i), _cell(attrs, "metadata", i))
            )
        return SearchResult(tuple(hits))

    # -- the optional ANN index ------------------------------------------------------------------

    def build_index(self, modality: str | None = None, *, connectivity: int = 16,
                    expansion_add: int = 128, expansion_search: int = 192) -> dict[str, int]:  # fmt: skip
        """Build and save an HNSW index (usearch, cosine) per table; returns rows indexed.

        ``search(..., ann=True)`` uses it; it follows later writes by data file. Rebuild to
        reclaim the slots of rows dropped since.
        """
        names = [sc.check_modality(modality)] if modality else sorted(self._states)
        params = AnnParams(connectivity, expansion_add, expansion_search)
        out = {}
        with self._lock.held():
            self.refresh()
            for name in (n for n in names if n in self._states):
                state = self._states[name]
                index = AnnIndex(state.dim, params)
                index.sync(state.snapshot(), state.live_files)
                index.save(self.path / name)
                self._ann[name] = index
                out[name] = len(index.index)
        return out

    def _ann_topk(self, name, state, snap, queries, k, allow, kernel):
        index = self._ann.get(name) or AnnIndex.load(self.path / name)
        if index is None:
            raise InvalidEmbeddingError(
                f"the {name} table has no ANN index: call store.build_index({name!r}) first, or "
                "search exactly (ann=False)"
            )
        self._ann[name] = index
        if index.sync(snap, state.live_files):
            with self._lock.held():
                index.save(self.path / name)
        live, allowed = state.live(), None if allow is None else set(allow.tolist())
        found = []
        for query, ids in zip(queries, index.candidates(queries, k), strict=True):
            rows = np.array(sorted({r for i in ids if (r := live.get(i)) is not None}), np.int64)
            if allowed is not None:
                rows = np.array([r for r in rows.tolist() if r in allowed], np.int64)
                if len(rows) < k:  # the filter left too few candidates: answer exactly
                    exact = snap.index.topk(query[None], k, dead=snap.dead, allow=allow,
                                            kernel=kernel)  # fmt: skip
                    found.append(exact[0])
                    continue
            scores = (snap.index.rows(rows).astype(np.float64) @ query.astype(np.float64)).astype(
                np.float32
            )
            order = np.lexsort((rows, -scores))[:k]
            found.append((rows[order], scores[order]))
        return found


def _cell(table, column: str, i: int):
    """Row ``i`` of ``column`` as a Python value (None where the file has no such column); one
    cell, not the row: converting whole rows was a fifth of an ANN search."""
    return table.column(column)[i].as_py() if column in table.column_names else None
