"""Fuzz: random edits to a weight file's metadata, footer and length load or raise a typed error.

Every edit is opened every public way (read_metadata, WeightLoader.load_weights, load_model and
an embedding); anything but a result or an ``LLMCompressionError`` fails (issue 10).
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from hostile_helpers import fuzz, metadata, model_file, rewrite
from hypothesis import given
from hypothesis import strategies as st

from llm_compression.errors import LLMCompressionError
from llm_compression.loader import WeightLoader, load_model
from llm_compression.provider.modalities import embed_texts
from llm_compression.weightfile import read_metadata

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
BIG_INTS = st.sampled_from([0, -1, 1, 2, 3, 5, 7, 2**31, 2**63, 10**18, 10**100])


DTYPES = ("float16", "int8", "float32")  # the split fast path, int8 rows, plain rows


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return {d: model_file(tmp_path_factory.mktemp(d) / "m.parquet", dtype=d) for d in DTYPES}


@pytest.fixture
def copy_of(tmp_path_factory, originals):
    def make(dtype: str = "float16"):
        path = tmp_path_factory.mktemp("edit") / "m.parquet"
        shutil.copyfile(originals[dtype], path)
        return path

    return make


def _open_every_way(path) -> None:
    calls = (
        lambda: read_metadata(path),
        lambda: WeightLoader(path).load_weights(),
        lambda: embed_texts(load_model(path), ["a cat on a mat"]),
    )
    for call in calls:
        try:
            call()
        except LLMCompressionError as e:
            assert str(path) in str(e) or str(e), e


@fuzz(25)
@given(data=st.data())
def test_random_value_for_a_metadata_key(copy_of, data):
    path = copy_of()
    key = data.draw(st.sampled_from(sorted(metadata(path))))
    value = data.draw(st.one_of(st.text(max_size=20), JSON.map(json.dumps)))
    rewrite(path, lambda kv: kv.update({key: value}), rehash=data.draw(st.booleans()))
    _open_every_way(path)


@fuzz(40)
@given(data=st.data())
def test_one_config_field_changed_and_rehashed(copy_of, data):
    """Consistent edits (the checksum recomputed): the config and shape checks must hold alone."""
    path = copy_of()
    config = json.loads(metadata(path)["llm_compression.config"])
    key = data.draw(st.sampled_from(sorted(config)))
    target = config
    if isinstance(config[key], dict) and data.draw(st.booleans()):
        target, key = config[key], data.draw(st.sampled_from(sorted(config[key])))
    target[key] = data.draw(st.one_of(BIG_INTS, JSON))
    text = json.dumps(config, sort_keys=True)
    rewrite(path, lambda kv: kv.update({"llm_compression.config": text}), rehash=True)
    _open_every_way(path)


@fuzz(25)
@given(data=st.data())
def test_one_tensor_index_field_changed_and_rehashed(copy_of, data):
    path = copy_of(data.draw(st.sampled_from(DTYPES)))
    index = json.loads(metadata(path)["llm_compression.tensors"])
    row = data.draw(st.sampled_from(index))
    key = data.draw(st.sampled_from(sorted(row)))
    row[key] = data.draw(st.one_of(BIG_INTS, JSON, st.lists(BIG_INTS, max_size=3)))
    text = json.dumps(index)
    rewrite(path, lambda kv: kv.update({"llm_compression.tensors": text}), rehash=True)
    _open_every_way(path)


@fuzz(40)
@given(
    dtype=st.sampled_from(DTYPES), where=st.floats(0, 1), patch=st.binary(min_size=1, max_size=8)
)
def test_bytes_overwritten_in_the_footer(copy_of, dtype, where, patch):
    path = copy_of(dtype)
    raw = bytearray(path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8  # Thrift footer + its length + "PAR1"
    start = len(raw) - footer + int(where * (footer - 1))
    raw[start : start + len(patch)] = patch
    path.write_bytes(bytes(raw[: max(len(raw), start + len(patch))]))
    _open_every_way(path)


@fuzz(20)
@given(dtype=st.sampled_from(DTYPES), keep=st.floats(0, 1))
def test_cut_short_anywhere(copy_of, dtype, keep):
    path = copy_of(dtype)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    _open_every_way(path)


def test_the_editor_keeps_a_file_intact(copy_of):
    path = copy_of()
    rewrite(path, lambda kv: None)
    assert read_metadata(path).metadata_checked
    assert pq.ParquetFile(path).num_row_groups == len(WeightLoader(path).tensor_names)
