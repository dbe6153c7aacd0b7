"""MultimodalStorage: rows, search, deletes, compaction, filters, providers and bad input."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pyarrow.compute as pc
import pytest

from llm_compression.errors import (
    IdNotFoundError,
    InvalidEmbeddingError,
    SchemaMismatchError,
    StorageError,
    StoreNotFoundError,
)
from llm_compression.storage import MODALITIES, MultimodalStorage, SearchResult

MODEL = "test-model"


def vecs(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def ids(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def brute_force(matrix: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = m @ (query / np.linalg.norm(query))
    return list(np.argsort(-scores, kind="stable")[:k])


def files_under(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns}


@pytest.fixture
def store(tmp_path):
    return MultimodalStorage(tmp_path / "store")


def test_add_get_round_trip_keeps_vectors_sources_and_metadata(store):
    v = vecs(5)
    version = store.add(ids(5), v, modality="text", model=MODEL,
                        sources=[f"s{i}.txt" for i in range(5)],
                        metadata=[{"i": i} if i % 2 else None for i in range(5)])  # fmt: skip
    assert version == 1 and store.count() == 5 and len(store) == 5
    table = store.get(["r3", "r0"])
    assert table.column("id").to_pylist() == ["r3", "r0"]
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist()), v[[3, 0]])
    assert table.column("source").to_pylist() == ["s3.txt", "s0.txt"]
    assert table.column("metadata").to_pylist() == ['{"i": 3}', None]
    assert table.column("model").to_pylist() == [MODEL, MODEL]
    assert table.schema.field("vector").type.list_size == 16


@pytest.mark.parametrize("k", [1, 7, 50])
def test_search_matches_brute_force(store, k):
    v = vecs(300)
    store.add(ids(200), v[:200], modality="image", model=MODEL)
    store.add(ids(100, "s"), v[200:], modality="image", model=MODEL)
    all_ids = ids(200) + ids(100, "s")
    q = vecs(3, seed=1)
    results = store.search(q, k=k)
    assert isinstance(results, list) and len(results) == 3
    for query, result in zip(q, results, strict=True):
        assert list(result.ids) == [all_ids[i] for i in brute_force(v, query, k)]
        assert np.all(np.diff(result.scores) <= 0)
    single = store.search(q[0], k=k)
    assert isinstance(single, SearchResult) and single.ids == results[0].ids
    np.testing.assert_allclose(single.scores, results[0].scores, rtol=1e-5)


def test_search_k_larger_than_table_and_exact_hit(store):
    v = vecs(4)
    store.add(ids(4), v, modality="text", model=MODEL)
    result = store.search(v[2] * 3.0, k=10)
    assert len(result) == 4 and result[0][0] == "r2"
    assert result[0][1] == pytest.approx(1.0, abs=1e-5)


def test_delete_upsert_compact_and_reopen(tmp_path):
    path = tmp_path / "s"
    store = MultimodalStorage(path)
    v = vecs(10)
    store.add(ids(10), v, modality="text", model=MODEL)
    assert store.delete(["r1", "r2"]) == 2
    assert store.count() == 8
    assert "r1" not in store.search(v[1], k=10).ids
    with pytest.raises(IdNotFoundError, match="r1"):
        store.get(["r1"])
    new = -v[3]
    store.upsert(["r3", "x"], np.stack([new, v[0] + 1]), modality="text", model=MODEL)
    assert store.count() == 9
    np.testing.assert_array_equal(store.get(["r3"]).column("vector").to_pylist()[0], new)
    assert store.search(new, k=1).ids == ("r3",)
    before = store.stats()["tables"]["text"]
    assert before["fragments"] == 2 and before["deleted"] == 3
    result = store.compact()
    assert result["fragments_removed"] == 2
    after = store.stats()["tables"]["text"]
    assert after == {**before, "fragments": 1, "deleted": 0, "bytes": after["bytes"]}
    assert len(list((path / "data" / "text").iterdir())) == 1
    reopened = MultimodalStorage(path, create=False)
    assert reopened.count() == 9
    assert sorted(reopened.scan("text").column("id").to_pylist()) == sorted(
        [f"r{i}" for i in range(10) if i not in (1, 2)] + ["x"]
    )
    assert reopened.search(new, k=1).ids == ("r3",)


def test_compact_drops_empty_tables_so_the_model_can_change(store):
    store.add(["a"], vecs(1), modality="audio", model=MODEL)
    store.delete(["a"])
    store.compact()
    assert store.modalities == ()
    store.add(["a"], vecs(1, dim=8), modality="audio", model="other")
    assert store.count("audio") == 1


def test_second_instance_sees_writes_incrementally(tmp_path):
    a = MultimodalStorage(tmp_path / "s")
    b = MultimodalStorage(tmp_path / "s")
    v = vecs(6)
    a.add(ids(3), v[:3], modality="text", model=MODEL)
    assert b.count() == 3
    a.add(ids(3, "n"), v[3:], modality="text", model=MODEL)
    a.delete(["r0"])
    assert b.count() == 5 and b.search(v[4], k=1).ids == ("n1",)
    a.compact()
    assert b.search(v[5], k=1).ids == ("n2",) and b.version == a.version
    with pytest.raises(InvalidEmbeddingError, match="upsert"):
        b.add(["n0"], v[:1], modality="text", model=MODEL)


def test_filters_in_scan_and_search(store):
    v = vecs(20)
    store.add(ids(20), v, modality="text", model=MODEL,
              sources=[f"{'a' if i < 10 else 'b'}.txt" for i in range(20)])  # fmt: skip
    store.delete(["r0"])
    rows = store.scan("text", filter=pc.field("source") == "a.txt")
    assert sorted(rows.column("id").to_pylist()) == sorted(ids(10)[1:])
    hits = store.search(v[0], k=20, filter=pc.field("source") == "a.txt")
    assert set(hits.ids) == set(ids(10)[1:])
    hits = store.search(v[15], k=3, filter=pc.field("id").isin(["r15", "r16", "r0"]))
    assert hits.ids[0] == "r15" and set(hits.ids) == {"r15", "r16"}
    with pytest.raises(InvalidEmbeddingError, match="filter"):
        store.search(v[0], filter=pc.field("nope") == 1)


def test_several_modalities_need_modality_for_vectors(store):
    store.add(["a"], vecs(1, 8), modality="text", model="m1")
    store.add(["a"], vecs(1, 4), modality="image", model="m2")
    assert store.count() == 2 and store.count("image") == 1 and store.count("video") == 0
    with pytest.raises(SchemaMismatchError, match="modality="):
        store.search(vecs(1, 8)[0])
    assert store.search(vecs(1, 4)[0], modality="image").ids == ("a",)
    assert store.search(vecs(1, 4)[0], modality="video").ids == ()
    assert store.delete(["a"]) == 2


class FakeProvider:
    """Encodes text / images / audio to fixed vectors and records the calls."""

    def __init__(self, v):
        self.v, self.calls = v, []

    def encode(self, text):
        self.calls.append(("text", text))
        return self.v[0]

    def encode_image(self, image):
        self.calls.append(("image", image))
        return self.v[1][None, :]  # (1, dim) is accepted too

    def encode_audio(self, audio):
        self.calls.append(("audio", os.fspath(audio)))
        return self.v[2]


def test_video_files_go_to_encode_video(tmp_path):
    v = vecs(3, 8)
    provider = FakeProvider(v)
    provider.encode_video = lambda path: v[1]
    store = MultimodalStorage(tmp_path / "s", provider=provider)
    store.add(ids(3), v, modality="video", model="clip")
    clip = tmp_path / "q.mp4"
    clip.write_bytes(b"\x00")
    assert store.search(clip, k=1).ids == ("r1",)
    with pytest.raises(InvalidEmbeddingError, match="cannot search"):
        store.search(tmp_path / "q.unknown")


class FakeProviderWithClip(FakeProvider):
    """Like MultimodalEmbeddingProvider: a text model for `encode`, CLIP's text tower apart."""

    @property
    def clip_engine(self):
        return self

    def encode_text(self, text):
        self.calls.append(("clip-text", text))
        return self.v[2]


def test_provider_dispatch_by_input_type(tmp_path):
    from PIL import Image

    v = vecs(3, 8)
    provider = FakeProvider(v)
    store = MultimodalStorage(tmp_path / "s", provider=provider)
    store.add(ids(3), v, modality="clip", model="clip")
    store.add(ids(3), v, modality="audio", model="whisper")
    assert store.search("a cat", k=1).ids == ("r0",)  # text -> clip (no text table)
    image = Image.new("RGB", (4, 4))
    assert store.search(image, k=1).ids == ("r1",)
    wav = tmp_path / "q.wav"
    wav.write_bytes(b"RIFF")
    assert store.search(wav, k=1).ids == ("r2",)
    assert store.search(str(wav), k=1, modality="audio").ids == ("r2",)
    batch = store.search(["x", "y"], k=1)
    assert [r.ids for r in batch] == [("r0",), ("r0",)]
    assert [c[0] for c in provider.calls] == ["text", "image", "audio", "audio", "text", "text"]
    bare = MultimodalStorage(tmp_path / "s")
    with pytest.raises(InvalidEmbeddingError, match="provider"):
        bare.search("a cat")


def test_text_queries_on_clip_tables_use_the_clip_text_tower(tmp_path):
    v = vecs(3, 8)
    provider = FakeProviderWithClip(v)
    store = MultimodalStorage(tmp_path / "s", provider=provider)
    store.add(ids(3), v, modality="clip", model="clip")
    store.add(ids(3), v, modality="text", model="minilm")
    assert store.search("a cat", k=1).ids == ("r0",)  # text table, text model
    assert store.search("a cat", k=1, modality="clip").ids == ("r2",)  # CLIP text tower
    assert [c[0] for c in provider.calls] == ["text", "clip-text"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"vectors": vecs(2, 8)}, SchemaMismatchError, "16-d"),
        ({"model": "other"}, SchemaMismatchError, "other"),
        ({"vectors": vecs(2).astype(np.int32)}, SchemaMismatchError, "floating point"),
        ({"vectors": np.array([[np.nan] * 16, [1.0] * 16])}, InvalidEmbeddingError, "NaN"),
        ({"vectors": np.array([[np.inf] * 16, [1.0] * 16])}, InvalidEmbeddingError, "NaN or inf"),
        ({"vectors": np.zeros((2, 16))}, InvalidEmbeddingError, "zeros"),
        ({"ids": ["n1", "n1"]}, InvalidEmbeddingError, "duplicate"),
        ({"ids": ["r0", "n1"]}, InvalidEmbeddingError, "upsert"),
        ({"ids": [], "vectors": np.empty((0, 16))}, InvalidEmbeddingError, "empty"),
        ({"ids": ["n1", 2]}, InvalidEmbeddingError, "strings"),
        ({"vectors": vecs(3)}, InvalidEmbeddingError, r"shape \(2, dim\)"),
        ({"modality": "smell"}, SchemaMismatchError, "text"),
        ({"sources": ["a"]}, InvalidEmbeddingError, "sources"),
        ({"metadata": [{"a": object()}, None]}, InvalidEmbeddingError, "metadata"),
    ],
)
def test_bad_input_raises_typed_error_and_leaves_store_unchanged(store, kwargs, error, match):
    store.add(ids(3), vecs(3), modality="text", model=MODEL)
    before = (store.version, files_under(store.path))
    args = {"ids": ["n1", "n2"], "vectors": vecs(2, seed=5), "modality": "text", "model": MODEL}
    args.update(kwargs)
    with pytest.raises(error, match=match) as info:
        store.add(args.pop("ids"), args.pop("vectors"), **args)
    assert isinstance(info.value, StorageError)
    assert (store.version, files_under(store.path)) == before
    assert MultimodalStorage(store.path).count() == 3


def test_bad_queries_and_ids(store):
    store.add(ids(3), vecs(3), modality="text", model=MODEL)
    with pytest.raises(InvalidEmbeddingError, match="expected"):
        store.search(vecs(1, 8)[0])
    with pytest.raises(InvalidEmbeddingError, match="k must"):
        store.search(vecs(1)[0], k=0)
    with pytest.raises(InvalidEmbeddingError, match="finite"):
        store.search(np.full(16, np.nan))
    with pytest.raises(IdNotFoundError, match="nope"):
        store.delete(["nope"])
    assert store.delete(["nope"], missing_ok=True) == 0 and store.version == 1
    with pytest.raises(SchemaMismatchError, match="unknown modality"):
        store.count("smell")
    assert set(MODALITIES) >= {"text", "image", "audio", "video", "clip"}


def test_paths_that_are_not_stores(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(StoreNotFoundError, match="not an embedding store"):
        MultimodalStorage(tmp_path / "other")
    with pytest.raises(StoreNotFoundError):
        MultimodalStorage(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert MultimodalStorage(tmp_path / "empty").count() == 0


def test_index_chunks_and_parallel_fragments_match_brute_force(tmp_path, monkeypatch):
    from llm_compression.storage import search, table

    monkeypatch.setattr(search, "TAIL_BYTES", 1 << 18)  # 4096-row tail at dim 16: every path runs
    monkeypatch.setattr(table, "SPLIT_ROWS", 500)  # batches of >= 1000 rows go to one file per core
    store = MultimodalStorage(tmp_path / "store")
    sizes = [1, 3, 700, 400, 1500, 1600, 2500, 5, 1000, 4100, 3]  # new, grow, full tail, own chunk
    v, all_ids = vecs(sum(sizes)), []
    for n in sizes:
        start = len(all_ids)
        all_ids += ids(n, f"b{start}_")
        store.add(all_ids[start:], v[start : start + n], modality="text", model=MODEL)
    expected_fragments = sum(len(table.fragment_sizes(n)) for n in sizes)
    assert store.stats()["tables"]["text"]["fragments"] == expected_fragments > len(sizes)
    index = store._states["text"].index
    assert sum(len(c) for c in index.chunks) == len(v) and 1 < len(index.chunks) < len(sizes)
    store.delete(all_ids[700:710])
    dead = set(range(700, 710))
    allowed = set(range(0, len(v), 7)) - dead  # a sparse filter: the index gathers those rows
    cond = pc.field("id").isin([all_ids[i] for i in sorted(allowed)])
    q = vecs(4, seed=1)
    for check in (store, MultimodalStorage(tmp_path / "store")):  # incremental, then cold
        for query, hits in zip(q, check.search(q, k=12), strict=True):
            want = [all_ids[i] for i in brute_force(v, query, 12 + len(dead)) if i not in dead]
            assert list(hits.ids) == want[:12]
        filtered = check.search(q[0], k=5, filter=cond)
        rows = sorted(allowed)
        assert list(filtered.ids) == [all_ids[rows[i]] for i in brute_force(v[rows], q[0], 5)]
        got = check.get([all_ids[4000], all_ids[-1]])
        np.testing.assert_array_equal(np.array(got.column("vector").to_pylist()), v[[4000, -1]])


@pytest.mark.parametrize("rows", [1, 999, 1000, 5001, 300_000])
def test_fragment_sizes_cover_the_batch(rows, monkeypatch):
    from llm_compression.storage import table

    monkeypatch.setattr(table, "SPLIT_ROWS", 500)
    sizes = table.fragment_sizes(rows)
    assert sum(sizes) == rows and max(sizes) - min(sizes) <= 1
    assert max(sizes) <= table.PARALLEL_ROWS
    assert len(sizes) == max(-(-rows // table.PARALLEL_ROWS), min(table.WORKERS, rows // 500), 1)


def test_fragments_written_by_pyarrows_writer_stay_readable(tmp_path, monkeypatch):
    """Stores made before the fragment writer (pyarrow's pq.write_table) read, verify, compact."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_compression.storage import parquet_writer, table, verify

    def pyarrow_writer(rows, fd, *, row_group_rows, compression, statistics):
        sink = pa.BufferOutputStream()  # the options of the previous write path
        pq.write_table(rows, sink, compression=dict(compression), row_group_size=row_group_rows,
                       use_dictionary=["modality", "model"], write_statistics=list(statistics),
                       write_page_checksum=True)  # fmt: skip
        data = sink.getvalue().to_pybytes()
        os.write(fd, data)
        return zlib.crc32(data), len(data)

    path, v = tmp_path / "s", vecs(40)
    with monkeypatch.context() as patch:
        patch.setattr(table.parquet_writer, "write_table", pyarrow_writer)
        MultimodalStorage(path).add(ids(20), v[:20], modality="text", model=MODEL,
                                    sources=[f"a{i}" for i in range(20)])  # fmt: skip
    old = next((path / "data" / "text").iterdir())
    assert "parquet-cpp-arrow" in pq.ParquetFile(old).metadata.created_by
    store = MultimodalStorage(path)
    store.add(ids(20, "n"), v[20:], modality="text", model=MODEL)
    new = [f for f in (path / "data" / "text").iterdir() if f != old]
    assert pq.ParquetFile(new[0]).metadata.created_by == parquet_writer.CREATED_BY
    assert verify(path).ok
    for check in (store, MultimodalStorage(path)):
        got = check.get(["r3", "n3"])
        np.testing.assert_array_equal(np.array(got.column("vector").to_pylist()), v[[3, 23]])
        assert got.column("source").to_pylist() == ["a3", None]
        assert check.search(v[25], k=1).ids == ("n5",)
    store.delete(["r0"])
    store.compact()
    assert verify(path).ok and store.count() == 39 and store.search(v[7], k=1).ids == ("r7",)


def test_checks_during_the_write_leave_the_store_unchanged(store, monkeypatch):
    """The id and norm checks run while fragments are written; a failure there removes them."""
    from llm_compression.storage import store as store_module
    from llm_compression.storage import table

    monkeypatch.setattr(table, "SPLIT_ROWS", 500)  # several fragments, written in parallel
    store.add(ids(3), vecs(3), modality="text", model=MODEL)
    before = (store.version, files_under(store.path))
    for bad in (["d", "d"], ["r1", "d"], ["d", "e"]):  # duplicate, taken, NaN
        v = vecs(2000)
        v[1500, 3] = np.nan if bad == ["d", "e"] else v[1500, 3]
        with pytest.raises(InvalidEmbeddingError, match="duplicate|upsert|NaN"):
            store.add(bad + ids(1998, "x"), v, modality="text", model=MODEL)
        assert (store.version, files_under(store.path)) == before

    def broken(vectors, out):
        raise MemoryError("no room for the search copy")

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_unit_rows_into", broken)
        with pytest.raises(MemoryError):
            store.add(ids(2000, "y"), vecs(2000), modality="text", model=MODEL)
    assert (store.version, files_under(store.path)) == before
    store.add(ids(2000, "y"), vecs(2000), modality="text", model=MODEL)
    assert store.count() == 2003 and store.stats()["tables"]["text"]["fragments"] == 3


def test_id_map_follows_adds_upserts_and_deletes(tmp_path):
    """The id -> live row map takes new rows lazily; it must equal one built from scratch."""
    store, other = MultimodalStorage(tmp_path / "s"), MultimodalStorage(tmp_path / "s")
    v = vecs(60)
    store.add(ids(20), v[:20], modality="text", model=MODEL)
    other.add(ids(20, "n"), v[20:40], modality="text", model=MODEL)  # other builds its map
    store.add(ids(10, "m"), v[40:50], modality="text", model=MODEL)  # pending in both maps
    store.upsert(["m1", "r2", "z"], v[50:53], modality="text", model=MODEL)
    store.delete(["m2", "n3"])  # other loads these tombstones of rows it has not mapped yet
    store.add(ids(3, "q"), v[53:56], modality="text", model=MODEL)
    store.delete(["q0"])
    expected = MultimodalStorage(tmp_path / "s")._states["text"].live()
    other.refresh()
    assert store._states["text"].live() == other._states["text"].live() == expected
    assert expected["m1"] == 50 and expected["r2"] == 51 and "m2" not in expected
    assert len(expected) == store.count() == other.count() == 56 - 5
    with pytest.raises(InvalidEmbeddingError, match="upsert"):
        other.add(["z"], v[:1], modality="text", model=MODEL)
    other.add(["m2", "q0"], v[:2], modality="text", model=MODEL)  # deleted ids may come back
    assert store.get(["q0"]).column("id").to_pylist() == ["q0"]
