"""Data files written by tables/datafile.py (pyarrow's columns + our vector pages) read back bit
for bit in pyarrow, Polars and DuckDB, with the metadata pyarrow would have written."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_compression.tables import datafile
from llm_compression.tables import schema as sc


def batch(n: int, dim: int, *, metadata: bool = True, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors[0, 0] = -0.0  # signs, subnormals and extremes must survive bit for bit
    vectors[-1, -1] = np.float32(1e-45)
    vectors[n // 2, 0] = np.float32(1e18)
    rows = sc.validate_batch(
        [f"id{i}" for i in range(n)], vectors, [None if i % 3 else f"s{i}" for i in range(n)],
        [{"page": i, "tags": ["a"] * (i % 2), "who": {"x": i / 2}} for i in range(n)]
        if metadata else None,
    )  # fmt: skip
    return sc.batch_table(rows, modality="text", model="tiny"), vectors


def pyarrow_file(table: pa.Table, path, leaves: list[str]) -> None:
    """pyarrow's file: vectors uncompressed, every other leaf column snappy."""
    codecs = {leaf: "none" if leaf.startswith("vector.") else "snappy" for leaf in leaves}
    pq.write_table(table, path, compression=codecs, use_dictionary=False, write_statistics=["id"])


def bits(column) -> np.ndarray:
    return np.stack(column).astype(np.float32).view(np.uint32)


@pytest.mark.parametrize(("n", "dim"), [(1, 1), (7, 3), (3000, 384)])
def test_pyarrow_reads_back_the_table_and_the_floats_bit_for_bit(tmp_path, n, dim):
    table, vectors = batch(n, dim)
    path = tmp_path / "f.parquet"
    digest = datafile.write(path, table)
    assert digest == xxhash.xxh3_64(path.read_bytes()).hexdigest()
    back = pq.read_table(path)
    assert back.schema.equals(table.schema) and back.equals(table)
    flat = back.column("vector").combine_chunks().values.to_numpy()
    assert np.array_equal(flat.view(np.uint32), vectors.reshape(-1).view(np.uint32))


def test_polars_and_duckdb_read_the_same_rows(tmp_path):
    import duckdb
    import polars as pl

    table, vectors = batch(500, 16)
    path = tmp_path / "f.parquet"
    datafile.write(path, table)
    frame = pl.read_parquet(path)
    assert frame.get_column("id").to_list() == table.column("id").to_pylist()
    assert np.array_equal(bits(frame.get_column("vector").to_list()), vectors.view(np.uint32))
    assert frame.get_column("metadata").to_list() == table.column("metadata").to_pylist()
    rows = duckdb.sql(f"SELECT id, vector, source FROM '{path}' ORDER BY id").fetchall()
    order = np.argsort(np.array(table.column("id").to_pylist()))
    assert [r[0] for r in rows] == [table.column("id")[int(i)].as_py() for i in order]
    assert np.array_equal(bits([r[1] for r in rows]), vectors[order].view(np.uint32))
    assert [r[2] for r in rows] == [table.column("source")[int(i)].as_py() for i in order]


def test_the_footer_lists_the_vector_column_as_pyarrow_does(tmp_path):
    table, _ = batch(3000, 384)
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    datafile.write(ours, table)
    schema = pq.read_metadata(ours).schema
    pyarrow_file(table, theirs, [schema.column(i).path for i in range(len(schema))])
    a, b = pq.read_metadata(ours), pq.read_metadata(theirs)
    assert a.schema.equals(b.schema) and a.metadata == b.metadata  # ARROW:schema included
    assert a.num_rows == b.num_rows and a.num_row_groups == b.num_row_groups == 1
    for i in range(a.num_columns):
        ca, cb = a.row_group(0).column(i).to_dict(), b.row_group(0).column(i).to_dict()
        # pyarrow's own vector pages differ in count and level bytes, not in what they hold
        sizes = ("data_page_offset", "total_compressed_size", "total_uncompressed_size")
        if ca["path_in_schema"] == "vector.list.element":
            assert ca["encodings"] == cb["encodings"] == ("RLE", "PLAIN")
        assert {k: v for k, v in ca.items() if k not in sizes} == {
            k: v for k, v in cb.items() if k not in sizes
        }
    # the row group's columns are laid out in schema order, each where its footer entry says
    offsets = [a.row_group(0).column(i).data_page_offset for i in range(a.num_columns)]
    assert offsets == sorted(offsets)


def test_pages_of_every_size_and_the_vector_column_anywhere(tmp_path, monkeypatch):
    import duckdb

    monkeypatch.setattr(datafile, "PAGE_BYTES", 100)  # many pages, the last one short
    table, vectors = batch(101, 5)
    for at in (0, 3, table.num_columns - 1):
        moved = table.remove_column(1).add_column(at, "vector", table.column("vector"))
        moved = moved.cast(moved.schema.set(at, table.schema.field("vector")))
        path = tmp_path / f"at{at}.parquet"
        datafile.write(path, moved)
        assert pq.read_table(path).equals(moved)
        group = pq.read_metadata(path).row_group(0)
        offsets = [group.column(i).data_page_offset for i in range(group.num_columns)]
        assert offsets == sorted(offsets)  # the later columns moved behind the vectors
        rows = duckdb.sql(f"SELECT vector FROM '{path}'").fetchall()
        assert np.array_equal(bits([r[0] for r in rows]), vectors.view(np.uint32))


def test_tables_it_does_not_encode_itself_go_to_pyarrow(tmp_path):
    ragged = pa.table({"id": ["a", "b"], "vector": pa.array([[1.0], [2.0, 3.0]], sc.VECTOR_TYPE)})
    nulls = pa.table({"id": ["a", "b"], "vector": pa.array([[1.0], None], sc.VECTOR_TYPE)})
    doubles = pa.table({"id": ["a"], "vector": pa.array([[1.0]], pa.list_(pa.float64()))})
    for i, table in enumerate((ragged, nulls, doubles, ragged.slice(0, 0))):
        path = tmp_path / f"{i}.parquet"
        assert datafile.write(path, table) == xxhash.xxh3_64(path.read_bytes()).hexdigest()
        assert pq.read_table(path).equals(table)


def test_sliced_and_chunked_vector_columns(tmp_path):
    table, vectors = batch(40, 6, metadata=False)
    chunked = pa.concat_tables([table.slice(0, 13), table.slice(13)])
    for i, part in enumerate((table.slice(7, 20), chunked)):
        path = tmp_path / f"{i}.parquet"
        datafile.write(path, part)
        assert pq.read_table(path).equals(part.combine_chunks())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    dim=st.integers(1, 40),
    page=st.integers(4, 600),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_of_any_shape(tmp_path_factory, n, dim, page, seed):
    # any 32-bit pattern: NaN payloads, infinities and subnormals included
    words = np.random.default_rng(seed).integers(0, 2**32, (n, dim), dtype=np.uint32)
    vectors = words.view(np.float32)
    table = pa.table(
        {
            "id": [str(i) for i in range(n)],
            "vector": sc.vector_array(vectors),
            "created_at": pa.array(
                [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")
            ),  # fmt: skip
        },
        schema=pa.schema(
            [
                sc.BASE_SCHEMA.field("id"),
                sc.BASE_SCHEMA.field("vector"),
                sc.BASE_SCHEMA.field("created_at"),
            ]
        ),  # fmt: skip
    )
    path = tmp_path_factory.mktemp("f") / "f.parquet"
    old = datafile.PAGE_BYTES
    datafile.PAGE_BYTES = page
    try:
        datafile.write(path, table)
    finally:
        datafile.PAGE_BYTES = old
    flat = pq.read_table(path).column("vector").combine_chunks().values.to_numpy()
    assert np.array_equal(flat.view(np.uint32), vectors.reshape(-1).view(np.uint32))


def test_vector_rows_maps_only_files_laid_out_as_ours(tmp_path, monkeypatch):
    table, vectors = batch(300, 24)
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    datafile.write(ours, table)
    pyarrow_file(table, theirs, ["id", "vector.list.element", "source", "modality", "model",
                                 "created_at"])  # fmt: skip
    mapped = datafile.vector_rows(ours, 300, 24)
    assert np.array_equal(mapped.view(np.uint32), vectors.view(np.uint32))
    assert mapped.ctypes.data % datafile.ALIGN == 0 and not mapped.flags.writeable
    assert datafile.vector_rows(theirs, 300, 24) is None  # pyarrow's pages: decoded instead
    assert (
        datafile.vector_rows(ours, 301, 24) is None and datafile.vector_rows(ours, 300, 23) is None
    )
    assert datafile.vector_rows(tmp_path / "gone.parquet", 300, 24) is None
    raw = bytearray(ours.read_bytes())
    at = raw.index(datafile._levels(24, 300))  # a level byte changed: not our layout any more
    raw[at + 9] ^= 1
    (tmp_path / "edited.parquet").write_bytes(raw)
    assert datafile.vector_rows(tmp_path / "edited.parquet", 300, 24) is None
    monkeypatch.setattr(datafile, "PAGE_BYTES", 24 * 4 * 100)  # three pages: decoded instead
    datafile.write(tmp_path / "paged.parquet", table)
    assert datafile.vector_rows(tmp_path / "paged.parquet", 300, 24) is None
