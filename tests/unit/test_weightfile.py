"""store: write_model, read_metadata, the tensor index, casts and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from llm_compression.errors import ConfigError, ConversionError
from llm_compression.families import config_to_dict, preset
from llm_compression.weightfile import (
    FORMAT_VERSION,
    QUANT_INT8_SYM_CHANNEL,
    WeightFile,
    bfloat16_bits_to_float32,
    float32_to_bfloat16_bits,
    quantize_int8_rows,
    read_metadata,
    read_tensor_index,
    write_model,
)
from llm_compression.weightfile.format import INDEX_COLUMNS, join_bytes, split_bytes

CFG = preset("all-minilm-l6-v2")


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embed.token.weight": rng.standard_normal((10, 8)).astype(np.float32),
        "embed.norm.weight": np.ones(8, np.float32),
        "layers.0.attn.q.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "layers.0.attn.q.bias": rng.standard_normal(8).astype(np.float32),
        "layers.0.mlp.up.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "layers.0.mlp_norm.weight": rng.standard_normal(8).astype(np.float32),
        "encoder.conv1.weight": rng.standard_normal((8, 4, 3)).astype(np.float32),
        "logit_scale": np.array(4.6, np.float32),
    }


def test_metadata_round_trip(tmp_path):
    files = {"tokenizer.json": b'{"model": {}}', "vocab.bin": bytes(range(256)) * 3, "empty": b""}
    sources = {"model.safetensors": "ab" * 32}
    path = write_model(
        tmp_path / "m.parquet", tiny_tensors(), config=CFG, files=files, sources=sources
    )
    meta = read_metadata(path)
    assert meta.format_version == FORMAT_VERSION
    assert meta.family == "bert"
    assert meta.config == json.loads(json.dumps(config_to_dict(CFG)))
    assert meta.files == files
    assert meta.sources == sources
    assert meta.created_by.startswith("llm_compression ")
    assert meta.num_tensors == 8
    assert meta.total_params == sum(t.size for t in tiny_tensors().values())
    assert meta.storage_dtype == "float16"
    assert meta.checksum == "xxh3_64"
    assert meta.file_size == path.stat().st_size


def test_file_layout_is_one_row_group_per_tensor_zstd(tmp_path):
    path = write_model(tmp_path / "m.parquet", tiny_tensors(), config=CFG)
    footer = pq.ParquetFile(path).metadata
    assert footer.num_row_groups == footer.num_rows == 8
    for i in range(footer.num_row_groups):
        group = footer.row_group(i)
        assert group.num_rows == 1
        assert {group.column(j).compression for j in range(group.num_columns)} == {"ZSTD"}


def test_index_in_file_order_without_decoding(tmp_path):
    tensors = tiny_tensors()
    path = write_model(tmp_path / "m.parquet", tensors, config=CFG, dtype="int8")
    index = read_tensor_index(path)
    assert [i.name for i in index] == list(tensors)
    by_name = {i.name: i for i in index}
    assert by_name["embed.token.weight"].dtype == "int8"  # token embeddings: one scale per token
    assert by_name["layers.0.attn.q.weight"].dtype == "int8"
    assert by_name["layers.0.attn.q.weight"].quant_type == QUANT_INT8_SYM_CHANNEL
    assert by_name["layers.0.attn.q.weight"].quant_axis == 0
    assert by_name["layers.0.mlp.up.weight"].nbytes == 16 * 8
    for name in ("layers.0.attn.q.bias", "embed.norm.weight", "encoder.conv1.weight"):
        assert by_name[name].dtype == "float16" and by_name[name].quant_type is None
        assert by_name[name].encoding == "byte_stream_split"
    assert by_name["layers.0.attn.q.weight"].encoding == "plain"
    assert by_name["logit_scale"].shape == ()
    assert all(i.stored_bytes > 0 for i in index)


def test_iterable_input_is_streamed(tmp_path):
    consumed = []

    def gen():
        for name, value in tiny_tensors().items():
            consumed.append(name)
            yield name, value

    path = write_model(tmp_path / "m.parquet", gen(), config=CFG, dtype="float32")
    assert [i.name for i in read_tensor_index(path)] == consumed
    wf = WeightFile(path)
    data, scales = wf.read(wf.tensors["layers.0.attn.q.weight"])
    assert scales is None
    got = np.frombuffer(data, np.float32).reshape(8, 8)
    np.testing.assert_array_equal(got, tiny_tensors()["layers.0.attn.q.weight"])


def test_integer_tensors_keep_their_dtype(tmp_path):
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    path = write_model(
        tmp_path / "m.parquet", {"ids": ids, "mask": ids > 4}, config=CFG, dtype="int8"
    )
    index = {i.name: i for i in read_tensor_index(path)}
    assert index["ids"].dtype == "int64" and index["ids"].quant_type is None
    assert index["mask"].dtype == "bool"


@pytest.mark.parametrize("dtype", ["float64", "fp16", "", "INT8"])
def test_bad_dtype_lists_choices(tmp_path, dtype):
    with pytest.raises(ConfigError, match="float32.*float16.*bfloat16.*int8"):
        write_model(tmp_path / "m.parquet", tiny_tensors(), config=CFG, dtype=dtype)
    assert list(tmp_path.iterdir()) == []


def test_config_must_be_a_model_config(tmp_path):
    with pytest.raises(ConfigError, match="family config dataclass"):
        write_model(tmp_path / "m.parquet", tiny_tensors(), config={"family": "bert"})


def test_duplicate_names_raise_and_leave_nothing(tmp_path):
    pairs = [("a", np.zeros(2, np.float32)), ("b", np.ones(2)), ("a", np.ones(2))]
    with pytest.raises(ConversionError, match="duplicate tensor name 'a'"):
        write_model(tmp_path / "m.parquet", pairs, config=CFG)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    path = write_model(tmp_path / "m.parquet", tiny_tensors(0), config=CFG)
    before = path.read_bytes()

    def failing():
        yield "a", np.zeros(4, np.float32)
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        write_model(path, failing(), config=CFG)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_bad_items_and_values_are_typed_errors(tmp_path):
    with pytest.raises(ConversionError, match="pairs"):
        write_model(tmp_path / "m.parquet", [np.zeros(3)], config=CFG)
    with pytest.raises(ConversionError, match="dtype"):
        write_model(tmp_path / "m.parquet", {"s": np.array(["x"])}, config=CFG)
    with pytest.raises(ConversionError, match="cannot be read as a numpy array"):
        write_model(tmp_path / "m.parquet", {"t": [[1.0], [2.0, 3.0]]}, config=CFG)
    with pytest.raises(ConversionError, match="non-finite"):
        bad = np.array([[1.0, np.inf]], np.float32)
        write_model(tmp_path / "m.parquet", {"l.weight": bad}, config=CFG, dtype="int8")
    with pytest.raises(ConversionError, match="files must map"):
        write_model(tmp_path / "m.parquet", {}, config=CFG, files={"t.json": "text"})
    with pytest.raises(ConversionError, match="folder"):
        write_model(tmp_path, {}, config=CFG)
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_file_and_creates_folder(tmp_path):
    path = tmp_path / "new" / "m.parquet"
    write_model(path, tiny_tensors(0), config=CFG)
    write_model(path, {"x": np.zeros(3, np.float32)}, config=CFG)
    assert read_metadata(path).num_tensors == 1
    assert [p.name for p in path.parent.iterdir()] == ["m.parquet"]


def test_progress_bar_writes_to_stderr(tmp_path, capsys):
    write_model(tmp_path / "m.parquet", tiny_tensors(), config=CFG, progress=True)
    assert "writing" in capsys.readouterr().err


def test_bfloat16_rounds_to_nearest_even():
    x = np.array(
        [1.0, -2.5, 0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40]
        + [np.float32(1.0) + np.float32(2.0**-8)]  # exactly half way: rounds to even (1.0)
        + [np.float32(1.0) + np.float32(3 * 2.0**-8)],  # half way above odd: rounds up
        np.float32,
    )
    bits = float32_to_bfloat16_bits(x)
    back = bfloat16_bits_to_float32(bits)
    assert back[:6].tolist() == [1.0, -2.5, 0.0, -0.0, np.inf, -np.inf]
    assert np.signbit(back[3])
    assert back[8] == 1.0 and back[9] == 1.0 + 2.0**-6
    assert np.isinf(back[6])  # 3.4e38 rounds past the largest bfloat16
    nan = float32_to_bfloat16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bfloat16_bits_to_float32(nan)).all()


def test_quantize_int8_rows_bounds_and_zero_rows():
    w = np.array([[0.0, 0.0, 0.0], [1.0, -0.5, 0.25], [-127.0, 3.0, 1.0]], np.float32)
    q, scales = quantize_int8_rows(w)
    assert q.dtype == np.int8 and scales.dtype == np.float32
    assert scales[0] == 0 and (q[0] == 0).all()
    assert q[1, 0] == 127 and q[2, 0] == -127
    err = np.abs(q * scales[:, None] - w)
    assert (err <= scales[:, None] / 2 + 1e-6).all()


def test_tensor_over_the_value_limit_is_refused(tmp_path, monkeypatch):
    from llm_compression.weightfile import writer

    monkeypatch.setattr(writer, "MAX_TENSOR_BYTES", 100)
    with pytest.raises(ConversionError, match="at most 2 GiB per tensor"):
        write_model(tmp_path / "m.parquet", {"t": np.zeros(60, np.float32)}, config=CFG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("level", [-1, 1, 19])
def test_compression_levels_round_trip(tmp_path, level):
    tensors = tiny_tensors()
    path = write_model(
        tmp_path / "m.parquet", tensors, config=CFG, dtype="float32", compression_level=level
    )
    wf = WeightFile(path)
    for name, value in tensors.items():
        data, _ = wf.read(wf.tensors[name])
        assert np.frombuffer(data, np.float32).tobytes() == value.tobytes()


@pytest.mark.parametrize("level", [23, -8, 1.5, True, "3"])
def test_bad_compression_level(tmp_path, level):
    with pytest.raises(ConfigError, match="zstd level"):
        write_model(tmp_path / "m.parquet", {}, config=CFG, compression_level=level)


def test_store_does_not_import_torch():
    code = (
        "import sys, llm_compression.weightfile, llm_compression.commands.inspect; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_other_tools_read_the_tensor_table(tmp_path):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a dev extra")
    path = write_model(tmp_path / "m.parquet", tiny_tensors(), config=CFG, dtype="int8")
    rows = duckdb.sql(f"SELECT name, shape, dtype, quant_type FROM '{path}'").fetchall()
    assert rows[2] == ("layers.0.attn.q.weight", [8, 8], "int8", "int8_sym_channel")
    assert [r[0] for r in rows] == list(tiny_tensors())
    table = pq.read_table(path, columns=["name", "n_params"])
    assert table.column("n_params").to_pylist() == [a.size for a in tiny_tensors().values()]


def test_int8_quantizes_only_the_named_matrices(tmp_path):
    names = {"layers.0.attn.q.weight"}
    path = write_model(
        tmp_path / "m.parquet", tiny_tensors(), config=CFG, dtype="int8", quantize=names
    )
    stored = {n: i.dtype for n, i in WeightFile(path).tensors.items()}
    assert stored["layers.0.attn.q.weight"] == "int8"
    assert stored["layers.0.mlp.up.weight"] == stored["embed.token.weight"] == "float16"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_two_byte_floats_are_stored_byte_stream_split(tmp_path, dtype):
    value = np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 4
    path = write_model(tmp_path / "m.parquet", {"w": value}, config=CFG, dtype=dtype)
    wf = WeightFile(path)
    info = wf.tensors["w"]
    assert info.encoding == "byte_stream_split"
    bits = value.astype(np.float16) if dtype == "float16" else float32_to_bfloat16_bits(value)
    raw, _ = wf.read(info, raw=True)
    u8 = bits.view(np.uint8).reshape(-1, 2)
    assert bytes(raw) == u8[:, 0].tobytes() + u8[:, 1].tobytes()  # all low bytes, then high
    joined, _ = wf.read(info)
    assert bytes(joined) == bits.tobytes()
    assert np.array_equal(join_bytes(split_bytes(bits), 2), bits.view(np.uint8).reshape(-1))
    column = pq.read_table(path, columns=["encoding"]).column("encoding").to_pylist()
    assert column == ["byte_stream_split"]


def test_index_is_in_the_footer_and_matches_the_columns(tmp_path):
    path = write_model(tmp_path / "m.parquet", tiny_tensors(), config=CFG, dtype="int8")
    footer = json.loads(pq.ParquetFile(path).metadata.metadata[b"llm_compression.tensors"])
    table = pq.read_table(path, columns=INDEX_COLUMNS).to_pylist()
    assert footer == table
    assert [i.checksum for i in read_tensor_index(path)] == [r["checksum"] for r in table]


def test_written_file_is_readable_by_others(tmp_path):
    path = write_model(tmp_path / "m.parquet", tiny_tensors(), config=CFG)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
