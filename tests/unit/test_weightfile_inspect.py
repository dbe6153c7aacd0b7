"""`llm-compression inspect`: metadata and tensor table from the index columns only."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from llm_compression.cli import main
from llm_compression.families import preset
from llm_compression.weightfile import write_model

CFG = preset("all-minilm-l6-v2")
RNG = np.random.default_rng(2)
TENSORS = {
    "embed.token.weight": RNG.standard_normal((50, 16)).astype(np.float32),
    "layers.0.attn.q.weight": RNG.standard_normal((16, 16)).astype(np.float32),
    "layers.0.attn.q.bias": RNG.standard_normal(16).astype(np.float32),
}
N_PARAMS = 50 * 16 + 16 * 16 + 16


def write(tmp_path, dtype="int8"):
    return write_model(
        tmp_path / "m.parquet",
        TENSORS,
        config=CFG,
        dtype=dtype,
        files={"tokenizer.json": b"{}" * 10},
        sources={"model.safetensors": "0" * 64},
    )


def test_text_output(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format version  1" in out and "family          bert" in out
    assert "encoder: dim=384 layers=6 heads=12" in out
    assert f"params {N_PARAMS:,}" in out and "tensors         3" in out
    assert "tokenizer.json (20 bytes)" in out and "model.safetensors sha256 " + "0" * 64 in out
    assert "of float32" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-3:]}
    assert rows["layers.0.attn.q.weight"][-1] == "int8_sym_channel"
    assert (
        rows["layers.0.attn.q.weight"][3] == "int8" and rows["layers.0.attn.q.weight"][4] == "256"
    )
    assert rows["embed.token.weight"][1:3] == ["(50,", "16)"]
    assert rows["layers.0.attn.q.bias"][1:5] == [
        "(16,)",
        "float16",
        "32",
        rows["layers.0.attn.q.bias"][4],
    ]
    assert rows["layers.0.attn.q.bias"][-1] == "-"


def test_json_output(tmp_path, capsys):
    path = write(tmp_path, dtype="float16")
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == 1 and info["family"] == "bert"
    assert info["total_params"] == N_PARAMS and info["num_tensors"] == 3
    assert info["file_size"] == path.stat().st_size
    assert info["ratio_vs_float32"] == path.stat().st_size / (4 * N_PARAMS)
    assert info["config"]["encoder"]["dim"] == 384
    assert info["files"] == {"tokenizer.json": 20}
    assert [t["name"] for t in info["tensors"]] == list(TENSORS)
    assert info["tensors"][0] == {
        "name": "embed.token.weight",
        "shape": [50, 16],
        "dtype": "float16",
        "n_params": 800,
        "nbytes": 1600,
        "stored_bytes": info["tensors"][0]["stored_bytes"],
        "quant_type": None,
        "unused": False,
    }
    assert 0 < info["tensors"][0]["stored_bytes"] < 2500
    assert info["unused_tensors"] == 0 and info["unused_params"] == 0


def test_unused_source_tensors_are_marked(tmp_path, capsys):
    pooler = {"unused/hf/pooler.dense.bias": np.ones(16, np.float32)}
    path = write_model(tmp_path / "m.parquet", {**TENSORS, **pooler}, config=CFG)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unused          1 source tensors (16 params)" in out
    line = next(row for row in out.splitlines() if row.startswith("unused/hf/pooler.dense.bias"))
    assert line.split()[-1] == "unused"
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [t["unused"] for t in info["tensors"]] == [False, False, False, True]
    assert (info["unused_tensors"], info["unused_params"]) == (1, 16)


def test_never_decodes_tensor_data(tmp_path, capsys):
    path = write(tmp_path)
    column = pq.ParquetFile(path).metadata.row_group(0).column(3)  # embed.token.weight data
    raw = bytearray(path.read_bytes())
    start = column.data_page_offset
    raw[start + 40 : start + column.total_compressed_size] = bytes(
        column.total_compressed_size - 40
    )
    path.write_bytes(bytes(raw))
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_tensors"] == 3


def test_bad_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    assert main(["inspect", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "not a Parquet weight file" in err and "Traceback" not in err
