"""A tensor over 256 MiB (Parquet page and value limits) round-trips through write_model/WeightLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_compression.families import preset
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import read_tensor_index, write_model

pytestmark = pytest.mark.integration

ROWS, COLS = 160_000, 1024  # 163.8M float16 values = 312.5 MiB stored, 625 MiB as float32


def test_300_mib_float16_tensor(tmp_path):
    rng = np.random.default_rng(0)
    # float16 input avoids a 625 MiB float32 source; values are exact in float16 and float32.
    big = rng.standard_normal((ROWS, COLS), dtype=np.float32).astype(np.float16)
    small = {"embed.norm.weight": np.ones(COLS, np.float32)}
    path = write_model(
        tmp_path / "big.parquet",
        [("embed.token.weight", big), *small.items()],
        config=preset("all-minilm-l6-v2"),
        dtype="float16",
    )
    info = {i.name: i for i in read_tensor_index(path)}["embed.token.weight"]
    assert info.nbytes == ROWS * COLS * 2 > 300 * 2**20
    loader = WeightLoader(path, force_float32=False)
    stored = loader.get_layer("embed.token.weight")
    assert stored.dtype == torch.float16 and stored.shape == (ROWS, COLS)
    assert np.array_equal(stored.numpy().view(np.uint16), big.view(np.uint16))
    del stored
    weights = WeightLoader(path).load_weights()
    assert weights["embed.token.weight"].dtype == torch.float32
    assert torch.equal(weights["embed.token.weight"][::997], torch.from_numpy(big[::997]).float())
    assert torch.equal(weights["embed.norm.weight"], torch.ones(COLS))
