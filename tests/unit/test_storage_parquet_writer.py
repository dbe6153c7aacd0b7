"""The fragment Parquet writer: files read back exactly, match pyarrow's, and open in DuckDB."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_compression.storage import crc32
from llm_compression.storage import parquet_writer as pw
from llm_compression.storage import table as tb

ROW_GROUP = 700  # small row groups and pages, so that every file has several of each


def fragment(n: int, dim: int, *, sources="some", seed: int = 0) -> pa.Table:
    """A fragment table as `add` builds it, with null, empty and non-ASCII strings."""
    rng = np.random.default_rng(seed)
    pick = {
        "none": [None] * n,
        "all": [f"s/ü{i}.txt" for i in range(n)],
        "some": [None if i % 3 else f"s{i}" * (i % 4) for i in range(n)],
    }[sources]
    metadata = [{"i": i, "lang": "ελ"} if i % 2 else None for i in range(n)]
    batch = tb.validate_batch(
        [f"id{i}" for i in range(n)], rng.standard_normal((n, dim), np.float32), pick, metadata
    )
    return tb.batch_table(batch, modality="text", model="m")


def write(table: pa.Table, path, row_group_rows: int = ROW_GROUP) -> tuple[int, int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return pw.write_table(
            table,
            fd,
            row_group_rows=row_group_rows,
            compression=tb.COMPRESSION,
            statistics=tb.STATISTICS,
        )
    finally:
        os.close(fd)


def chunk_meta(pf: pq.ParquetFile, group: int, column: int) -> dict:
    meta = pf.metadata.row_group(group).column(column).to_dict()
    for where in ("data_page_offset", "total_compressed_size", "total_uncompressed_size"):
        del meta[where]  # pyarrow splits the string columns into pages differently
    return {**meta, "encodings": set(meta["encodings"])}


@pytest.mark.parametrize(
    "n, dim, sources",
    [(1, 1, "none"), (10, 4, "some"), (2000, 384, "some"), (1500, 7, "all"), (701, 3000, "none")],
)
def test_files_read_back_exactly_and_match_pyarrow_metadata(tmp_path, n, dim, sources):
    table = fragment(n, dim, sources=sources)
    crc, size = write(table, tmp_path / "ours.parquet")
    data = (tmp_path / "ours.parquet").read_bytes()
    assert (crc, size) == (zlib.crc32(data), len(data))
    ours = pq.ParquetFile(tmp_path / "ours.parquet", page_checksum_verification=True)
    back = ours.read()
    assert back.equals(table) and back.schema.metadata == table.schema.metadata
    assert back.schema.field("vector").type == pa.list_(pa.float32(), dim)
    pq.write_table(table, tmp_path / "ref.parquet", compression=tb.COMPRESSION,
                   row_group_size=ROW_GROUP, use_dictionary=False,
                   write_statistics=list(tb.STATISTICS))  # fmt: skip
    ref = pq.ParquetFile(tmp_path / "ref.parquet")
    assert ours.schema.equals(ref.schema)
    assert ours.metadata.num_row_groups == ref.metadata.num_row_groups == -(-n // ROW_GROUP)
    for group in range(ours.metadata.num_row_groups):
        for column in range(ours.metadata.num_columns):
            assert chunk_meta(ours, group, column) == chunk_meta(ref, group, column)
    stats = ours.metadata.row_group(0).column(0).statistics
    assert stats.has_min_max and stats.min == min(table.column("id")[:ROW_GROUP].to_pylist())


def test_chunked_and_sliced_input_as_compaction_passes_it(tmp_path):
    parts = [fragment(300, 16, seed=s).slice(s, 250) for s in range(4)]  # offsets in every buffer
    table = pa.concat_tables(parts)
    assert table.column("vector").num_chunks == 4
    write(table, tmp_path / "f.parquet", row_group_rows=400)  # row groups straddle the chunks
    assert pq.read_table(tmp_path / "f.parquet").equals(table.combine_chunks())


def test_duckdb_and_pyarrow_dataset_read_the_same_rows(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    table = fragment(1500, 32)
    write(table, tmp_path / "ours.parquet")
    pq.write_table(table, tmp_path / "ref.parquet", compression=tb.COMPRESSION)
    query = """SELECT id, vector::FLOAT[32] AS v, source, json_extract_string(metadata, '$.lang'),
               created_at::VARCHAR FROM read_parquet(?) ORDER BY id"""
    con = duckdb.connect()
    ours = con.execute(query, [str(tmp_path / "ours.parquet")]).fetchall()
    assert ours == con.execute(query, [str(tmp_path / "ref.parquet")]).fetchall()
    assert len(ours) == 1500 and ours[1][3] == "ελ"
    hits = ds.dataset(tmp_path / "ours.parquet").to_table(filter=ds.field("source") == "s3s3s3")
    assert hits.column("id").to_pylist() == ["id3"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=3000))
def test_crc32_combine_matches_zlib(a, b):
    assert crc32.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_flipped_byte_fails_the_page_checksum(tmp_path):
    path = tmp_path / "f.parquet"
    write(fragment(100, 64), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a float in the middle of the vector pages
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="CRC"):
        pq.ParquetFile(path, page_checksum_verification=True).read()


def test_short_writes_and_no_posix_fadvise_give_the_same_file(tmp_path, monkeypatch):
    table = fragment(2000, 48)
    expected = write(table, tmp_path / "a.parquet")
    write_once = os.write

    def short_writev(fd, parts):  # the kernel may write less than asked: half the first buffer
        first = memoryview(parts[0])
        return write_once(fd, first[: max(1, len(first) // 2)])

    monkeypatch.setattr(os, "writev", short_writev)
    monkeypatch.delattr(os, "posix_fadvise")
    assert write(table, tmp_path / "b.parquet") == expected
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_columns_it_cannot_write_raise(tmp_path):
    with pytest.raises(TypeError, match="not supported by the fragment writer"):
        write(pa.table({"x": pa.array([1.0, 2.0])}), tmp_path / "f.parquet")
    vector = pa.FixedSizeListArray.from_arrays(pa.array([1.0, None, 3.0, 4.0], pa.float32()), 2)
    schema = pa.schema([pa.field("vector", vector.type, nullable=False)])
    with pytest.raises(ValueError, match="nulls"):
        write(pa.Table.from_arrays([vector], schema=schema), tmp_path / "f.parquet")
