"""Bad weight files: each raises a typed error naming the file, what was wrong and the fix."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_compression.errors import (
    CorruptFileError,
    FormatError,
    LLMCompressionError,
    MissingTensorError,
    ModelFileNotFoundError,
)
from llm_compression.families import preset
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import WeightFile, read_metadata, read_tensor_index, write_model
from llm_compression.weightfile.format import META_PREFIX
from llm_compression.weightfile.writer import (
    _encode_tensor,
    _file_metadata,
    _new_writer,
    _row_table,
    index_entry,
)

CFG = preset("all-minilm-l6-v2")
RNG = np.random.default_rng(0)
TENSORS = {
    "layers.0.attn.q.weight": RNG.standard_normal((64, 64)).astype(np.float32),
    "layers.0.attn.q.bias": RNG.standard_normal(64).astype(np.float32),
    "layers.0.mlp.up.weight": RNG.standard_normal((128, 64)).astype(np.float32),
}


@pytest.fixture
def good(tmp_path):
    return write_model(tmp_path / "good.parquet", TENSORS, config=CFG, dtype="float32")


def craft(path, rows, **meta_overrides):
    """A file written like write_model but with chosen rows and metadata values."""
    writer = _new_writer(str(path))
    index = []
    for name, value in rows:
        table = _row_table(_encode_tensor(name, value, "float32", None))
        writer.write_table(table, row_group_size=1)
        index.append(index_entry(table))
    meta = _file_metadata(CFG, "float32", None, None, index)
    meta.update({META_PREFIX + k: v for k, v in meta_overrides.items() if v is not None})
    for key in [k for k, v in meta_overrides.items() if v is None]:
        del meta[META_PREFIX + key]
    writer.add_key_value_metadata(meta)
    writer.close()
    return path


def all_readers(path):
    """Every public way of opening a file; each must raise the same typed error."""
    return [
        lambda: read_metadata(path),
        lambda: read_tensor_index(path),
        lambda: WeightLoader(path).load_weights(),
    ]


def expect(error, path, match):
    for open_file in all_readers(path):
        with pytest.raises(error, match=match) as info:
            open_file()
        assert str(path) in str(info.value)
        assert isinstance(info.value, LLMCompressionError)


def test_missing_file(tmp_path):
    expect(ModelFileNotFoundError, tmp_path / "nope.parquet", "does not exist")


def test_folder_instead_of_file(tmp_path):
    expect(ModelFileNotFoundError, tmp_path, "is a folder")


@pytest.mark.parametrize("content", [b"", b"hello world, not parquet" * 10, b"\x00" * 64])
def test_not_parquet(tmp_path, content):
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    expect(FormatError, path, "not a Parquet weight file")


@pytest.mark.parametrize("keep", [4, 100, 0.5, 0.99, -1])
def test_truncated(good, keep):
    raw = good.read_bytes()
    cut = keep if isinstance(keep, int) and keep > 0 else int(len(raw) * keep) if keep > 0 else -1
    good.write_bytes(raw[:cut])
    expect(CorruptFileError, good, "truncated")


def _data_page_span(path, row_group):
    column = pq.ParquetFile(path).metadata.row_group(row_group).column(4)
    assert column.path_in_schema == "data"
    return column.data_page_offset, column.total_compressed_size


def test_bit_flip_in_tensor_data_fails_checksum(good):
    start, size = _data_page_span(good, 0)
    raw = bytearray(good.read_bytes())
    raw[start + size - 100] ^= 0x10  # inside the values, past the page header
    good.write_bytes(bytes(raw))
    loader = WeightLoader(good)  # the index and the other tensors are fine
    assert loader.get_layer("layers.0.attn.q.bias").shape == (64,)
    with pytest.raises(CorruptFileError, match="checksum") as info:
        loader.get_layer("layers.0.attn.q.weight")
    assert "layers.0.attn.q.weight" in str(info.value) and str(good) in str(info.value)
    with pytest.raises(CorruptFileError, match="checksum"):
        loader.load_weights()
    unchecked = WeightLoader(good, verify=False).get_layer("layers.0.attn.q.weight")
    assert not np.array_equal(unchecked.numpy(), TENSORS["layers.0.attn.q.weight"])


@pytest.mark.parametrize("where", [0.1, 0.5])
def test_bit_flip_in_page_header_or_compressed_stream(good, where):
    start, size = _data_page_span(good, 2)
    raw = bytearray(good.read_bytes())
    for k in range(8):  # garble a few bytes so decoding fails or the checksum catches it
        raw[start + int(size * where) + k] ^= 0xFF
    good.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="layers.0.mlp.up.weight"):
        WeightLoader(good).get_layer("layers.0.mlp.up.weight")


def test_foreign_parquet_schema(tmp_path):
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), path, compression="zstd")
    expect(FormatError, path, "not a llm_compression weight file.*convert")


def test_our_schema_without_our_metadata(tmp_path):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()), format_version=None)
    expect(FormatError, path, "no 'llm_compression.format_version' metadata")


def test_unknown_format_version(tmp_path):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()), format_version="2")
    expect(FormatError, path, "version 2.*reads version 1.*upgrade")


def test_malformed_metadata(tmp_path):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()), config="{not json")
    expect(CorruptFileError, path, "'llm_compression.config' is missing or malformed")


@pytest.mark.parametrize("index", ["[not json", "[]", '[{"name": "a"}, {}, {}]', "{}"])
def test_bad_footer_index(tmp_path, index):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()), tensors=index)
    for open_file in all_readers(path)[1:]:  # read_metadata does not read the index
        with pytest.raises(CorruptFileError, match="'llm_compression.tensors'.*convert"):
            open_file()


def test_unknown_encoding_in_index(tmp_path):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()))
    pf = pq.ParquetFile(path)
    meta = dict(pf.metadata.metadata)
    index = json.loads(meta[b"llm_compression.tensors"])
    index[1]["encoding"] = "delta"
    meta[b"llm_compression.tensors"] = json.dumps(index).encode()
    table = pf.read()
    with pq.ParquetWriter(path, table.schema.with_metadata(meta)) as writer:
        for i in range(pf.num_row_groups):
            writer.write_table(table.slice(i, 1), row_group_size=1)
    for open_file in all_readers(path)[1:]:  # read_metadata does not read the index
        with pytest.raises(FormatError, match="encoding 'delta'.*newer llm_compression"):
            open_file()


def test_tensor_count_mismatch(tmp_path):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()), num_tensors="7")
    expect(CorruptFileError, path, "says 7 tensors but the file has 3 rows")


def test_duplicate_names_in_file(tmp_path):
    rows = [("a", np.zeros(2, np.float32)), ("b", np.ones(2)), ("a", np.ones(3))]
    path = craft(tmp_path / "m.parquet", rows)
    with pytest.raises(FormatError, match="'a' appears twice"):
        WeightFile(path)
    with pytest.raises(FormatError, match="'a' appears twice"):
        WeightLoader(path)


def test_stored_config_that_cannot_be_rebuilt(tmp_path):
    path = craft(tmp_path / "m.parquet", list(TENSORS.items()), config='{"family": "gpt9"}')
    with pytest.raises(CorruptFileError, match="says 'bert' but the stored config is of.*gpt9"):
        WeightLoader(path)


def test_missing_tensor_lists_close_names(good):
    loader = WeightLoader(good)
    with pytest.raises(MissingTensorError, match=r"close names: \['layers.0.attn.q.weight'"):
        loader.get_layer("layers.0.attn.q.weights")
    with pytest.raises(MissingTensorError, match="'zzz'"):
        loader.load_weights(["layers.0.attn.q.bias", "zzz"])
    with pytest.raises(KeyError):  # MissingTensorError is also a KeyError
        loader.get_layer("nope")
