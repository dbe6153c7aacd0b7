"""Hypothesis round trips: write_model -> WeightLoader over storage dtypes, shapes and values."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from llm_compression.families import preset
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import quantize_int8_rows, read_metadata, write_model

CFG = preset("all-minilm-l6-v2")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)


def round_trip(tensors, dtype, **loader_options):
    with tempfile.TemporaryDirectory() as folder:
        path = write_model(Path(folder) / "m.parquet", tensors, config=CFG, dtype=dtype)
        return WeightLoader(path, **loader_options).load_weights()


@SETTINGS
@given(arrays(np.float32, SHAPES, elements=st.floats(width=32)))
def test_float32_is_bit_exact(value):
    got = round_trip({"t": value}, "float32")["t"].numpy()
    assert got.shape == value.shape
    assert np.array_equal(got.view(np.uint32), value.view(np.uint32))


@SETTINGS
@given(arrays(np.float32, SHAPES, elements=st.floats(-6e4, 6e4, width=32)))
def test_float16_rounds_like_numpy(value):
    stored = round_trip({"t": value}, "float16", force_float32=False)["t"]
    assert stored.dtype == torch.float16
    expected = value.astype(np.float16)
    assert np.array_equal(stored.numpy().view(np.uint16), expected.view(np.uint16))
    upcast = round_trip({"t": value}, "float16")["t"].numpy()
    assert np.array_equal(upcast, expected.astype(np.float32))  # exact upcast


@SETTINGS
@given(arrays(np.float32, SHAPES, elements=st.floats(width=32, allow_nan=False)))
def test_bfloat16_rounds_like_torch(value):
    stored = round_trip({"t": value}, "bfloat16", force_float32=False)["t"]
    assert stored.dtype == torch.bfloat16
    expected = torch.from_numpy(value.copy()).to(torch.bfloat16)
    assert torch.equal(stored.view(torch.int16), expected.view(torch.int16))
    upcast = round_trip({"t": value}, "bfloat16")["t"]
    assert torch.equal(upcast, expected.float())


@st.composite
def weight_matrices(draw):
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(0, 9))
    value = draw(arrays(np.float32, (rows, cols), elements=st.floats(-1e6, 1e6, width=32)))
    zero_rows = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    value[np.array(zero_rows)] = 0.0
    return value


@SETTINGS
@given(weight_matrices())
@example(np.array([[1e-45]], np.float32))  # max / 127 underflows float32 (Hypothesis found it)
def test_int8_within_half_a_step_per_row(value):
    name = "layers.0.mlp.up.weight"
    got = round_trip({name: value}, "int8")[name].numpy()
    scale = np.abs(value).max(axis=1, keepdims=True) / 127 if value.shape[1] else 0
    assert (np.abs(got - value) <= scale / 2 + 1e-6 * np.abs(value).max(initial=0)).all()
    assert (got[(value == 0).all(axis=1)] == 0).all()  # all-zero rows stay exactly zero
    stored = round_trip({name: value}, "int8", force_float32=False)[name]
    assert stored.dtype == torch.int8
    assert np.array_equal(stored.numpy(), quantize_int8_rows(value)[0])


@SETTINGS
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        arrays(np.float32, array_shapes(min_dims=0, max_dims=2, max_side=3)),
        max_size=5,
    ),
    st.dictionaries(st.text(min_size=1, max_size=30), st.binary(max_size=300), max_size=4),
)
def test_names_and_files_round_trip(tensors, files):
    with tempfile.TemporaryDirectory() as folder:
        path = write_model(
            Path(folder) / "m.parquet", tensors, config=CFG, dtype="float32", files=files
        )
        assert read_metadata(path).files == files
        loaded = WeightLoader(path).load_weights()
    assert list(loaded) == list(tensors)
    for name, value in tensors.items():
        assert np.array_equal(loaded[name].numpy(), value, equal_nan=True)
