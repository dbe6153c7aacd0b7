"""convert(): bad checkpoints raise typed errors that say what was looked for, and a failed
conversion never leaves a destination file (or a temp file) behind."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny import tiny_causal_lm, tiny_tokenizer_files
from safetensors.torch import load_file, save_file

from llm_compression.cli import main
from llm_compression.convert import convert
from llm_compression.convert.readers import HFWeights
from llm_compression.errors import (
    ConfigError,
    ConversionError,
    ModelFileNotFoundError,
    UnsupportedFamilyError,
)
from llm_compression.families import FAMILIES
from llm_compression.loader import WeightLoader


@pytest.fixture()
def llama_folder(tmp_path):
    hf, _, _ = tiny_causal_lm("llama")
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    for name, data in tiny_tokenizer_files().items():
        (folder / name).write_bytes(data)
    return folder


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_unknown_model_type_lists_families(llama_folder, tmp_path):
    _edit_config(llama_folder, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(UnsupportedFamilyError) as e:
        convert(llama_folder, tmp_path / "m.parquet")
    assert "'gpt2'" in str(e.value) and str(list(FAMILIES)) in str(e.value)
    with pytest.raises(UnsupportedFamilyError, match="family='t5'"):
        convert(llama_folder, tmp_path / "m.parquet", family="t5")


def test_empty_folder_and_missing_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no checkpoint.*model.safetensors.*model.bin.*gguf"):
        convert(tmp_path / "empty", tmp_path / "m.parquet")
    with pytest.raises(ModelFileNotFoundError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "m.parquet")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(
        ConversionError,
        match="neither a GGUF file, a CTranslate2 model.bin nor a PyTorch state dict",
    ):
        convert(tmp_path / "x.txt", tmp_path / "m.parquet")


def test_config_without_weights(llama_folder, tmp_path):
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="no weights.*model.safetensors.*pytorch_model.bin"):
        convert(llama_folder, tmp_path / "m.parquet")


def test_missing_tensor(llama_folder, tmp_path):
    _edit_weights(llama_folder, lambda s: s.pop("model.layers.1.self_attn.q_proj.weight"))
    with pytest.raises(ConversionError, match=r"missing 1: layers\.1\.attn\.q\.weight"):
        convert(llama_folder, tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_wrong_shape(llama_folder, tmp_path):
    _edit_config(llama_folder, intermediate_size=48)
    with pytest.raises(
        ConversionError,
        match=r"wrong shape 6: layers\.0\.mlp\.down\.weight \(32, 64\) \(expected \(32, 48\)\)",
    ):
        convert(llama_folder, tmp_path / "m.parquet")


def test_unexpected_upstream_tensor(llama_folder, tmp_path):
    _edit_weights(llama_folder, lambda s: s.update({"model.extra.weight": torch.zeros(3)}))
    with pytest.raises(
        ConversionError, match="1 tensors with no canonical name: model.extra.weight"
    ):
        convert(llama_folder, tmp_path / "m.parquet")


def test_untied_head_missing_when_config_says_untied(llama_folder, tmp_path):
    _edit_weights(llama_folder, lambda s: s.pop("lm_head.weight"))
    with pytest.raises(ConversionError, match="missing 1: lm_head.weight"):
        convert(llama_folder, tmp_path / "m.parquet")


def test_bad_dtype_and_no_tokenizer(llama_folder, tmp_path):
    with pytest.raises(ConfigError, match="dtype='int2'.*float32"):
        convert(llama_folder, tmp_path / "m.parquet", dtype="int2")
    with pytest.raises(ConfigError, match="dtype='gguf' keeps a GGUF's own blocks"):
        convert(llama_folder, tmp_path / "m.parquet", dtype="gguf")  # an HF folder
    (llama_folder / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="no tokenizer.*tokenizer.json"):
        convert(llama_folder, tmp_path / "m.parquet")


def test_failure_mid_write_leaves_nothing(llama_folder, tmp_path, monkeypatch):
    real_load = HFWeights.load
    calls = []

    def failing(self, name):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("disk went away")
        return real_load(self, name)

    monkeypatch.setattr(HFWeights, "load", failing)
    with pytest.raises(OSError, match="disk went away"):
        convert(llama_folder, tmp_path / "out" / "m.parquet")
    assert len(calls) == 5
    assert not (tmp_path / "out" / "m.parquet").exists()
    assert not [p for p in (tmp_path / "out").iterdir()]  # no temp file left either


def test_failed_conversion_keeps_previous_file(llama_folder, tmp_path):
    dst = convert(llama_folder, tmp_path / "m.parquet", dtype="float32")
    before = dst.read_bytes()
    _edit_weights(llama_folder, lambda s: s.pop("model.norm.weight"))
    with pytest.raises(ConversionError):
        convert(llama_folder, dst)
    assert dst.read_bytes() == before


def test_cli_convert(llama_folder, tmp_path, capsys):
    dst = tmp_path / "cli.parquet"
    assert main(["convert", str(llama_folder), str(dst), "--dtype", "int8", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert WeightLoader(dst).metadata.storage_dtype == "int8"
    assert main(["convert", str(tmp_path / "nowhere"), str(dst)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_convert_cached_reuses_current_files_and_replaces_stale_ones(llama_folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_compression.convert import convert_cached, is_current

    dst = tmp_path / "m.parquet"
    pq.write_table(pa.table({"x": [1]}), dst)  # e.g. a file an older format wrote
    assert not is_current(dst, dtype="float16")
    convert_cached(llama_folder, dst, dtype="float16")
    assert is_current(dst, dtype="float16") and not is_current(dst, dtype="int8")
    written = dst.stat().st_mtime_ns
    convert_cached(llama_folder, dst, dtype="float16")
    assert dst.stat().st_mtime_ns == written  # reused, not rewritten
    convert_cached(llama_folder, dst, dtype="int8")
    assert is_current(dst, dtype="int8")
