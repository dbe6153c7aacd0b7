"""The optional HNSW index: recall against exact search, kept in step with writes, saved."""

from __future__ import annotations

import numpy as np
import pytest
from tables_helpers import unit_vectors, weight_file

from llm_compression.errors import InvalidEmbeddingError
from llm_compression.tables import MultimodalStorage

pytest.importorskip("usearch", reason="the ann extra (usearch) is not installed")


@pytest.fixture
def store(tmp_path):
    s = MultimodalStorage(tmp_path / "s")
    s.add([f"r{i}" for i in range(3000)], unit_vectors(3000, 32), modality="text",
          model_file=weight_file(tmp_path), metadata=[{"even": i % 2 == 0} for i in range(3000)])  # fmt: skip
    return s


def recall(store, queries, k=10, **kwargs) -> float:
    exact = store.search(queries, k=k, **kwargs)
    approx = store.search(queries, k=k, ann=True, **kwargs)
    return np.mean([len(set(a.ids) & set(e.ids)) / k for a, e in zip(approx, exact, strict=True)])


def test_recall_and_exact_scores(store):
    with pytest.raises(InvalidEmbeddingError, match="build_index"):
        store.search(unit_vectors(1, 32)[0], ann=True)
    assert store.build_index() == {"text": 3000}
    queries = unit_vectors(50, 32, seed=5)
    assert recall(store, queries) >= 0.9
    hit = store.search(unit_vectors(3000, 32)[7], k=1, ann=True)[0]
    assert hit.id == "r7" and abs(hit.score - 1) < 1e-6 and hit.metadata == {"even": False}
    assert recall(store, queries, where={"even": True}) >= 0.9


def test_the_index_follows_writes_and_is_saved(store, tmp_path):
    store.build_index()
    model = weight_file(tmp_path)
    new = unit_vectors(5, 32, seed=9)
    store.add([f"n{i}" for i in range(5)], new, modality="text", model_file=model,
              metadata=[{"even": True}] * 5)  # fmt: skip
    store.delete(["r7"])
    store.upsert(["r8"], new[:1] * -1, modality="text", model_file=model, metadata=[{"even": True}])
    assert store.search(new[2], k=1, ann=True)[0].id == "n2"
    assert "r7" not in store.search(unit_vectors(3000, 32)[7], k=5, ann=True).ids
    assert store.search(-new[0], k=1, ann=True)[0].id == "r8"
    other = MultimodalStorage(store.path)  # loads the saved index, already in step
    assert other.search(new[3], k=1, ann=True)[0].id == "n3"
    store.compact()
    assert recall(other, unit_vectors(20, 32, seed=6)) >= 0.9
