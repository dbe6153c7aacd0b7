"""The fast float16/bfloat16 decode: C join + upcast loops, the direct zstd page path, checksums.

Three decode paths must agree bit for bit: streaming the zstd frame through weightfile/stream.py (the
default), Arrow's page decode + the C loop (``read_split`` unavailable), and numpy + torch (no C
extension). Each is forced here with a monkeypatch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_compression.errors import CorruptFileError, FormatError
from llm_compression.families import preset
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import (
    WeightFile,
    float32_to_bfloat16_bits,
    format,
    reader,
    stream,
    write_model,
)
from llm_compression.weightfile import writer as store_writer
from llm_compression.weightfile.format import split_bytes
from llm_compression.weightfile.pages import data_frame

CFG = preset("all-minilm-l6-v2")
ALL_BITS = np.arange(1 << 16, dtype=np.uint16)  # every float16 / bfloat16 bit pattern
PATHS = ["stream", "arrow+C", "numpy"]
native = pytest.importorskip("llm_compression.weightfile._unsplit", reason="C extension not built")


@pytest.fixture(params=PATHS)
def decode_path(request, monkeypatch):
    if request.param != "stream":
        monkeypatch.setattr(reader.WeightFile, "read_split", lambda self, info, **kw: None)
    if request.param == "numpy":
        monkeypatch.setattr(format, "native", None)
    return request.param


def _streams(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = split_bytes(bits).reshape(2, -1)
    return low, high


def test_c_float16_loop_is_exact_for_every_bit_pattern():
    out = np.empty(len(ALL_BITS), np.float32)
    native.float16_to_float32(*_streams(ALL_BITS), out)
    want = ALL_BITS.view(np.float16).astype(np.float32)  # numpy keeps NaN payloads too
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_c_bfloat16_and_join_loops_for_every_bit_pattern():
    out = np.empty(len(ALL_BITS), np.float32)
    native.bfloat16_to_float32(*_streams(ALL_BITS), out)
    assert np.array_equal(out.view(np.uint32), ALL_BITS.astype(np.uint32) << 16)
    joined = np.empty(len(ALL_BITS), np.uint16)
    native.join16(*_streams(ALL_BITS), joined)
    assert np.array_equal(joined, ALL_BITS)


@pytest.mark.parametrize("sizes", [(4, 4, 15), (4, 3, 16), (3, 4, 16)])
def test_c_loops_check_sizes(sizes):
    low, high, out = (np.zeros(s, np.uint8) for s in sizes)
    with pytest.raises(ValueError, match="expected two byte streams"):
        native.float16_to_float32(low, high, out)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("force_float32", [True, False])
def test_every_bit_pattern_round_trips_on_every_path(tmp_path, decode_path, dtype, force_float32):
    if dtype == "float16":
        value = ALL_BITS.view(np.float16)  # written as float16 without any rounding
    else:
        value = (ALL_BITS.astype(np.uint32) << 16).view(np.float32)  # exact bfloat16 values
    path = write_model(
        tmp_path / "m.parquet", {"w": value.reshape(256, 256)}, config=CFG, dtype=dtype
    )
    got = WeightLoader(path, force_float32=force_float32).get_layer("w").reshape(-1)
    want = value.astype(np.float32) if dtype == "float16" else value
    nan = np.isnan(want)
    if not force_float32:  # the bfloat16 writer quiets signalling NaNs; every other pattern is kept
        bits = got.view(torch.int16).numpy().view(np.uint16)
        assert np.array_equal(bits[~nan], ALL_BITS[~nan])
        assert np.isnan(got.float().numpy()[nan]).all()
        return
    assert np.array_equal(np.isnan(got.numpy()), nan)
    assert np.array_equal(got.numpy().view(np.uint32)[~nan], want.view(np.uint32)[~nan])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3000),
    piece=st.sampled_from([64, 1000, 1 << 18]),
    dtype=st.sampled_from(["float16", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_stream_path_equals_arrow_path_for_any_size_and_piece(
    tmp_path_factory, n, piece, dtype, seed
):
    values = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    path = write_model(
        tmp_path_factory.mktemp("s") / "m.parquet", {"w": values}, config=CFG, dtype=dtype
    )
    file = WeightFile(path)
    info = file.tensors["w"]
    data, _ = file.read(info)  # Arrow's decode, joined by format.join_bytes
    stored = np.frombuffer(data, np.uint16)
    old = stream.PIECE
    stream.PIECE = piece
    try:
        for upcast in (False, True):
            got = file.read_split(info, upcast=upcast)
            if upcast:
                want = stored.view(np.float16).astype(np.float32) if dtype == "float16" else None
                want = (
                    want if want is not None else (stored.astype(np.uint32) << 16).view(np.float32)
                )
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
            else:
                assert np.array_equal(got.view(np.uint16), stored)
    finally:
        stream.PIECE = old


def test_large_low_byte_buffers_are_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "KEEP_SCRATCH", 1000)
    values = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="float16")
    monkeypatch.setattr(stream, "_SCRATCH", stream._Scratch())
    got = WeightLoader(path).get_layer("w").numpy()
    assert np.array_equal(got, values.astype(np.float16).astype(np.float32))
    assert len(stream._SCRATCH.low) == 0  # 3000 > KEEP_SCRATCH: allocated for that tensor only


def test_stream_path_is_used_for_files_we_write(tmp_path, monkeypatch):
    path = write_model(tmp_path / "m.parquet", {"w": np.ones((8, 8), np.float32)}, config=CFG)
    monkeypatch.setattr(reader.WeightFile, "read", lambda *a, **k: pytest.fail("Arrow path used"))
    assert torch.equal(WeightLoader(path).get_layer("w"), torch.ones(8, 8))


def _flip_in_frame(path, name: str, offset_from_end: int) -> None:
    file = WeightFile(path)
    column = file._footer.row_group(file.tensors[name].row_group).column(file._data_column)
    raw = bytearray(path.read_bytes())
    raw[column.data_page_offset + column.total_compressed_size - offset_from_end] ^= 0x04
    path.write_bytes(bytes(raw))


def test_stream_path_detects_bit_flips(tmp_path):
    values = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="float16")
    _flip_in_frame(path, "w", 300)
    with pytest.raises(CorruptFileError, match=r"tensor 'w'.*(checksum|decode)"):
        WeightLoader(path).get_layer("w")


def test_stream_path_reports_a_short_page(tmp_path):
    values = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="float16")
    file = WeightFile(path)
    info = file.tensors["w"]
    frame = file._frame(info)
    short = type(frame)(frame.frame[: len(frame.frame) // 2], frame.uncompressed_size)
    file._frame = lambda info: short
    with pytest.raises(CorruptFileError, match="convert"):
        file.read_split(info, upcast=True)


def _single_value_file(path, nullable=False, **options) -> pq.ColumnChunkMetaData:
    schema = pa.schema([pa.field("data", pa.large_binary(), nullable=nullable)])
    table = pa.table({"data": pa.array([b"\x01\x02" * 500], pa.large_binary())}, schema=schema)
    pq.write_table(table, path, **options)
    return pq.ParquetFile(path).metadata.row_group(0).column(0)


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "snappy", "use_dictionary": False},
        {"compression": "zstd", "use_dictionary": True},
        {"compression": "zstd", "use_dictionary": False, "data_page_version": "2.0"},
        {"compression": "zstd", "use_dictionary": False, "nullable": True},  # levels in the page
    ],
)
def test_other_page_layouts_fall_back(tmp_path, options):
    column = _single_value_file(tmp_path / "x.parquet", **options)
    mapped = memoryview((tmp_path / "x.parquet").read_bytes())
    assert data_frame(mapped, column, 1000) is None


def test_our_page_layout_is_found(tmp_path):
    column = _single_value_file(tmp_path / "x.parquet", compression="zstd", use_dictionary=False)
    mapped = memoryview((tmp_path / "x.parquet").read_bytes())
    assert data_frame(mapped, column, 1000) is not None
    assert data_frame(mapped, column, 999) is None  # the value must have the tensor's size


def test_files_with_crc32_checksums_still_verify(tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "CHECKSUM_ALGORITHM", "crc32")
    values = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="float16")
    loader = WeightLoader(path)
    assert loader.metadata.checksum == "crc32"
    assert torch.equal(loader.get_layer("w"), torch.from_numpy(values).half().float())
    _flip_in_frame(path, "w", 100)
    with pytest.raises(CorruptFileError, match="crc32 checksum"):
        WeightLoader(path).get_layer("w")


def test_unknown_checksum_algorithm_is_a_format_error(tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "CHECKSUM_ALGORITHM", "sha3")
    monkeypatch.setitem(format.CHECKSUMS, "sha3", format.CHECKSUMS["crc32"])
    path = write_model(tmp_path / "m.parquet", {"w": np.ones(4, np.float32)}, config=CFG)
    monkeypatch.delitem(format.CHECKSUMS, "sha3")
    with pytest.raises(FormatError, match="'sha3'.*upgrade llm_compression or re-convert"):
        WeightLoader(path)


def test_xxh3_checksum_is_signed_int64_of_the_stored_bytes():
    import xxhash

    data = bytes(range(256)) * 3
    digest = xxhash.xxh3_64_intdigest(data)
    value = format.checksum(data)
    assert -(1 << 63) <= value < 1 << 63 and value % (1 << 64) == digest
    assert format.checksum(data[:100], data[100:]) == format.checksum(data)


def test_bfloat16_helper_matches_stream(tmp_path):
    values = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="bfloat16")
    got = WeightLoader(path).get_layer("w").numpy()
    want = (float32_to_bfloat16_bits(values).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(got, want)


# -- plain rows straight from their frame (read_plain) and quantized as they decode ------------------
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 70),
    piece=st.sampled_from([64, 1000, 1 << 18]),
    seed=st.integers(0, 2**16),
)
def test_plain_and_quantized_reads_equal_the_arrow_path(tmp_path_factory, rows, cols, piece, seed):
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    path = write_model(
        tmp_path_factory.mktemp("p") / "m.parquet", {"w": values}, config=CFG, dtype="float32"
    )
    file = WeightFile(path)
    info = file.tensors["w"]
    old = stream.PIECE
    stream.PIECE = piece
    try:
        plain, scales = file.read_plain(info)
        q, q_scales = file.read_quantized(info, format.quantize_int8_rows)
    finally:
        stream.PIECE = old
    assert scales is None and plain.shape == (rows, cols)
    assert np.array_equal(plain, np.frombuffer(file.read(info)[0], np.float32).reshape(rows, cols))
    want_q, want_scales = format.quantize_int8_rows(values)
    assert np.array_equal(q, want_q) and np.array_equal(q_scales, want_scales)


def test_an_int8_files_rows_come_with_their_scales(tmp_path):
    values = np.random.default_rng(0).standard_normal((40, 24)).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="int8",
                       quantize={"w"})  # fmt: skip
    file = WeightFile(path)
    q, scales = file.read_plain(file.tensors["w"])
    data, want_scales = file.read(file.tensors["w"])
    assert q.dtype == np.int8 and np.array_equal(q.reshape(-1), np.frombuffer(data, np.int8))
    assert bytes(scales) == bytes(want_scales)
    assert file.read_quantized(file.tensors["w"], format.quantize_int8_rows) is None  # int8 already


@pytest.mark.parametrize("how", ["read_plain", "read_quantized"])
def test_plain_reads_detect_bit_flips_and_short_pages(tmp_path, how):
    values = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    path = write_model(tmp_path / "m.parquet", {"w": values}, config=CFG, dtype="float32")
    read = {
        "read_plain": lambda f: f.read_plain(f.tensors["w"]),
        "read_quantized": lambda f: f.read_quantized(f.tensors["w"], format.quantize_int8_rows),
    }[how]
    file = WeightFile(path)
    frame = file._frame(file.tensors["w"])
    short = type(frame)(frame.frame[: len(frame.frame) // 2], frame.uncompressed_size)
    file._frame = lambda info: short
    with pytest.raises(CorruptFileError, match="convert"):
        read(file)
    _flip_in_frame(path, "w", 300)
    with pytest.raises(CorruptFileError, match=r"tensor 'w'.*(checksum|decode)"):
        read(WeightFile(path))
