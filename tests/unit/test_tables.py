"""MultimodalStorage on Delta Lake: writes, search with filters, and what other engines see."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tables_helpers import unit_vectors, weight_file

from llm_compression.errors import (
    IdNotFoundError,
    InvalidEmbeddingError,
    InvalidFilterError,
    SchemaMismatchError,
    StoreNotFoundError,
)
from llm_compression.tables import VECTOR_TYPE, MultimodalStorage


@pytest.fixture
def model(tmp_path):
    return weight_file(tmp_path)


@pytest.fixture
def store(tmp_path, model):
    s = MultimodalStorage(tmp_path / "store")
    x = unit_vectors(60)
    s.add([f"d{i}" for i in range(60)], x, modality="text", model_file=model,
          sources=[f"doc{i % 3}.txt" for i in range(60)],
          metadata=[{"lang": "en" if i % 2 else "de", "page": i} for i in range(60)])  # fmt: skip
    return s


def live_ids_everywhere(path) -> dict[str, list[str]]:
    """The sorted ids of a Delta table as pyarrow (deltalake), Polars and DuckDB see them."""
    import duckdb
    import polars as pl

    dataset = DeltaTable(str(path)).to_pyarrow_dataset()  # noqa: F841 (DuckDB reads it by name)
    return {
        "pyarrow": sorted(DeltaTable(str(path)).to_pyarrow_table(columns=["id"])["id"].to_pylist()),
        "polars": sorted(pl.read_delta(str(path)).get_column("id").to_list()),
        "duckdb": sorted(r[0] for r in duckdb.sql("SELECT id FROM dataset").fetchall()),
    }


def test_other_engines_see_exactly_the_live_rows_after_deletes_and_upserts(store, model):
    store.delete(["d1", "d2", "d3"])
    store.upsert(["d4", "n1"], unit_vectors(2, seed=9), modality="text", model_file=model)
    want = sorted({f"d{i}" for i in range(60)} - {"d1", "d2", "d3"} | {"n1"})
    seen = live_ids_everywhere(store.path / "text")
    assert seen == {"pyarrow": want, "polars": want, "duckdb": want}
    assert store.count() == len(want)
    row = store.get(["d4"], modality="text")
    np.testing.assert_allclose(row["vector"][0].as_py(), unit_vectors(2, seed=9)[0], rtol=1e-6)


def test_columns_and_the_vector_type_other_engines_see(store, model):
    table = DeltaTable(str(store.path / "text")).to_pyarrow_table()
    assert table.column_names == ["id", "vector", "source", "modality", "model", "created_at",
                                  "metadata"]  # fmt: skip
    assert table.schema.field("vector").type == VECTOR_TYPE  # list<float32>: Delta has no fixed
    assert table.schema.field("metadata").type == pa.struct([("lang", pa.string()),
                                                             ("page", pa.int64())])  # fmt: skip
    assert set(table["model"].to_pylist()) == {model.stem}  # from the weight file
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"


def test_search_is_exact_and_results_carry_source_and_metadata(store):
    x = unit_vectors(60)
    hits = store.search(x[7], k=5)
    want = np.argsort(-(x @ x[7]), kind="stable")[:5]
    assert list(hits.ids) == [f"d{i}" for i in want]
    top = hits[0]
    assert (top.id, top.source, top.metadata) == ("d7", "doc1.txt", {"lang": "en", "page": 7})
    assert abs(top.score - 1.0) < 1e-6
    assert [len(r) for r in store.search(x[:3], k=2)] == [2, 2, 2]


@pytest.mark.parametrize(
    "where", ["metadata.lang = 'en' AND metadata.page >= 30", {"lang": "en", "source": "doc0.txt"}]
)
def test_where_filters_as_sql_or_equalities(store, where):
    x = unit_vectors(60)
    hits = store.search(x[0], k=60, where=where)
    for hit in hits:
        assert hit.metadata["lang"] == "en"
        if isinstance(where, str):
            assert hit.metadata["page"] >= 30
        else:
            assert hit.source == "doc0.txt"
    assert len(hits) == (15 if isinstance(where, str) else 10)


def test_bad_filters_raise_typed_errors_naming_the_columns(store):
    x = unit_vectors(1)[0]
    with pytest.raises(InvalidFilterError, match="columns"):
        store.search(x, where="no_such_column = 1")
    with pytest.raises(InvalidFilterError):
        store.search(x, where={"lang": object()})
    with pytest.raises(InvalidFilterError):
        store.search(x, where="")


def test_bytes_ids_and_other_bad_input_are_refused_and_change_nothing(store, model, tmp_path):
    v = store.table("text").version()
    cases = [
        (dict(ids=[b"a"], vectors=unit_vectors(1)), InvalidEmbeddingError, "bytes"),
        (dict(ids=["a", "a"], vectors=unit_vectors(2)), InvalidEmbeddingError, "twice"),
        (dict(ids=["d0"], vectors=unit_vectors(1)), InvalidEmbeddingError, "upsert"),
        (dict(ids=["z"], vectors=np.zeros((1, 16))), InvalidEmbeddingError, "zero"),
        (dict(ids=["z"], vectors=np.full((1, 16), np.nan)), InvalidEmbeddingError, "NaN"),
        (dict(ids=["z"], vectors=unit_vectors(1, dim=8)), SchemaMismatchError, "16-d"),
        (
            dict(ids=["z"], vectors=unit_vectors(1), metadata={"a": 1}),
            InvalidEmbeddingError,
            "metadata",
        ),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            store.add(modality="text", model_file=model, **kwargs)
    other = weight_file(tmp_path, name="other-model", seed=3)
    with pytest.raises(SchemaMismatchError, match="other-model"):
        store.add(["z"], unit_vectors(1), modality="text", model_file=other)
    with pytest.raises(SchemaMismatchError, match="model_file"):
        store.add(["z"], unit_vectors(1), modality="text")
    with pytest.raises(SchemaMismatchError, match="modality"):
        store.add(["z"], unit_vectors(1), modality="smell", model_file=model)
    with pytest.raises(IdNotFoundError):
        store.delete(["nope"])
    assert store.delete(["nope"], missing_ok=True) == 0
    assert store.table("text").version() == v and store.count() == 60


def test_paths_that_are_not_stores(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreNotFoundError):
        MultimodalStorage(tmp_path / "full")
    with pytest.raises(StoreNotFoundError):
        MultimodalStorage(tmp_path / "missing", create=False)
    (tmp_path / "old" / "manifests").mkdir(parents=True)
    with pytest.raises(StoreNotFoundError, match="old format"):
        MultimodalStorage(tmp_path / "old")


def test_a_second_store_object_follows_writes_and_compaction(store, model):
    other = MultimodalStorage(store.path)
    store.add(["late"], unit_vectors(1, seed=4), modality="text", model_file=model)
    assert other.search(unit_vectors(1, seed=4)[0], k=1)[0].id == "late"
    store.delete(["late"])
    store.compact()
    assert other.count() == 60 and "late" not in other.search(unit_vectors(1, seed=4)[0], k=3).ids
    assert store.vacuum(retention_hours=0)["text"]  # old files go; readers still fine
    assert other.count() == 60 and len(other.search(unit_vectors(1)[0], k=60)) == 60


def test_the_tables_package_never_imports_torch():
    code = "import llm_compression.tables, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(["add", "upsert", "delete"]),
                          st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=4,
                                   unique=True)), min_size=1, max_size=6))  # fmt: skip
def test_operations_match_a_dict_model(tmp_path_factory, ops):
    tmp = tmp_path_factory.mktemp("ops")
    store, model, want = MultimodalStorage(tmp / "s"), weight_file(tmp), {}
    for step, (op, ids) in enumerate(ops):
        vectors = unit_vectors(len(ids), seed=step)
        try:
            if op == "delete":
                store.delete(ids, missing_ok=True)
                for i in ids:
                    want.pop(i, None)
            else:
                getattr(store, op)(ids, vectors, modality="text", model_file=model)
                want.update(zip(ids, vectors, strict=True))
        except InvalidEmbeddingError:
            assert op == "add" and set(ids) & set(want)
    if want:
        assert sorted(live_ids_everywhere(tmp / "s" / "text")["pyarrow"]) == sorted(want)
        for i, vec in want.items():
            assert store.search(vec, k=1)[0].id == i


def test_the_documented_polars_and_duckdb_queries_run(store):
    import duckdb
    import polars as pl

    text = DeltaTable(str(store.path / "text"))
    df = pl.read_delta(str(store.path / "text")).filter(
        pl.col("metadata").struct.field("lang") == "en"
    )
    assert df.height == 30
    query = unit_vectors(60)[4]
    dataset = text.to_pyarrow_dataset()  # noqa: F841 (DuckDB scans it by name)
    top = duckdb.sql(f"""
        SELECT id, source, metadata.lang AS lang,
               array_cosine_similarity(vector::FLOAT[16], {query.tolist()}::FLOAT[16]) AS score
        FROM dataset ORDER BY score DESC LIMIT 3""").fetchall()
    assert top[0][:3] == ("d4", "doc1.txt", "de")


def test_large_appends_write_files_in_parallel_in_one_commit(store, model, monkeypatch):
    from llm_compression.tables import store as store_module

    monkeypatch.setattr(store_module, "MIN_FILE_ROWS", 10)
    monkeypatch.setattr(store_module, "WRITE_THREADS", 3)
    version = store.table("text").version()
    x = unit_vectors(90, seed=11)
    store.add([f"p{i}" for i in range(90)], x, modality="text", model_file=model,
              sources=["s"] * 90, metadata=[{"lang": "fr", "page": i} for i in range(90)])  # fmt: skip
    table = store.table("text")
    assert table.version() == version + 1 and len(table.file_uris()) == 1 + 3
    assert len(live_ids_everywhere(store.path / "text")["duckdb"]) == 150
    assert store.search(x[50], k=1)[0].id == "p50"
    from llm_compression.tables import verify

    assert verify(store.path).ok and not verify(store.path).unchecked
    files = sorted(p.name for p in (store.path / "text").rglob("*.*"))
    taken = [*(f"q{i}" for i in range(89)), "p3"]  # checked while its 3 files are written
    with pytest.raises(InvalidEmbeddingError, match="already in the text table"):
        store.add(taken, unit_vectors(90, seed=12), modality="text", model_file=model,
                  sources=["s"] * 90, metadata=[{"lang": "fr", "page": i} for i in range(90)])  # fmt: skip
    assert sorted(p.name for p in (store.path / "text").rglob("*.*")) == files  # none left
    assert store.table("text").version() == version + 1 and store.count("text") == 150


def test_the_first_open_after_an_append_maps_the_floats_of_its_data_files(
    tmp_path, model, monkeypatch
):
    from llm_compression.tables import cache, datafile, search, state

    monkeypatch.setattr(search, "TAIL_BYTES", 1)  # files of 1024+ rows stay chunks of their own
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5000, 16)).astype(np.float32) * rng.uniform(0.5, 3, (5000, 1))
    writer = MultimodalStorage(tmp_path / "fresh")
    writer.add([f"r{i}" for i in range(5000)], x, modality="text", model_file=model)
    assert not (tmp_path / "fresh" / "text" / cache.CACHE_DIR).exists()  # appends write none

    def no_decoding(self, file, columns):
        assert "vector" not in columns, "the vectors should be mapped from the data file"
        return original(self, file, columns)

    original = state.TableState._read
    monkeypatch.setattr(state.TableState, "_read", no_decoding)
    queries = x[:40] + rng.standard_normal((40, 16)).astype(np.float32)
    mapped = MultimodalStorage(tmp_path / "fresh")
    some = "id LIKE 'r1%'"  # 1,111 rows: the filtered rows are gathered
    found = [mapped.search(q, k=5) for q in queries] + mapped.search(queries, k=5)  # int8, BLAS
    found += mapped.search(queries[:3], k=5, where=some) + mapped.search(queries, k=5, where=some)
    monkeypatch.setattr(datafile, "vector_rows", lambda *args: None)
    monkeypatch.setattr(state.TableState, "_read", original)
    decoded = MultimodalStorage(tmp_path / "fresh")
    assert found == [decoded.search(q, k=5) for q in queries] + decoded.search(queries, k=5) + (
        decoded.search(queries[:3], k=5, where=some) + decoded.search(queries, k=5, where=some)
    )
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    best = np.argsort(-(unit @ (queries / np.linalg.norm(queries, axis=1, keepdims=True)).T), 0)
    assert [r.ids for r in found[:40]] == [tuple(f"r{i}" for i in best[:5, j]) for j in range(40)]
    assert mapped._states["text"].index.norms[0] is not None  # rows as written, mapped
    rows = np.arange(0, 5000, 7)
    np.testing.assert_array_equal(mapped._states["text"].index.rows(rows),
                                  decoded._states["text"].index.rows(rows))  # fmt: skip


def test_files_others_write_are_cached_and_a_damaged_cache_is_ignored(store, model, monkeypatch):
    from llm_compression.tables import cache, state

    x = unit_vectors(60)
    store.upsert(["d0"], x[:1], modality="text", model_file=model)  # deltalake rewrites the file
    want = store.search(x[:5], k=4)
    cache.flush()
    folder = store.path / "text" / cache.CACHE_DIR
    assert sorted(p.suffix for p in folder.iterdir()) == [".npy", ".xxh3"]

    def no_decoding(self, file, columns):
        assert "vector" not in columns, "the vectors should come from the cache"
        return original(self, file, columns)

    original = state.TableState._read
    monkeypatch.setattr(state.TableState, "_read", no_decoding)
    assert MultimodalStorage(store.path).search(x[:5], k=4) == want
    monkeypatch.undo()
    npy = next(folder.glob("*.npy"))
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0x10
    npy.write_bytes(raw)
    assert MultimodalStorage(store.path).search(x[:5], k=4) == want  # decoded again
    cache.flush()
    store.delete([f"d{i}" for i in range(60)])
    store.vacuum(retention_hours=0)
    assert not any(p.name.startswith("part") for p in folder.iterdir())  # pruned with its file


def test_a_search_sees_what_another_store_object_committed_since(store, model):
    reader = MultimodalStorage(store.path)
    assert reader.search(unit_vectors(60)[7], k=1)[0].id == "d7"
    y = unit_vectors(3, seed=9)
    store.add(["n0", "n1", "n2"], y, modality="text", model_file=model)
    assert reader.search(y[1], k=1)[0].id == "n1"  # the next log entry appeared: re-read
    store.delete(["n1"])
    assert reader.search(y[1], k=1)[0].id != "n1"
