"""convert(): tiny random Hugging Face checkpoints -> weight files, tensor for tensor.

The expected canonical state dicts come from tests/unit/hf_tiny.py, whose name maps are written
independently of llm_compression.convert, so the two check each other.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hf_tiny import tiny_bert, tiny_causal_lm, tiny_clip, tiny_tokenizer_files

from llm_compression.convert import convert
from llm_compression.families.clip import write_clip_vocab
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import read_metadata
from llm_compression.weights import clip_bpe_vocab


def _save(hf, folder, **kwargs):
    hf.save_pretrained(folder, **kwargs)
    for name, data in tiny_tokenizer_files().items():
        (folder / name).write_bytes(data)
    return folder


def assert_exact(path, expected: dict) -> WeightLoader:
    """The weight file holds exactly ``expected`` (canonical name -> tensor), bit for bit."""
    loader = WeightLoader(path)
    got = loader.load_weights()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor.float(), rtol=0, atol=0, msg=name)
    return loader


@pytest.mark.parametrize("arch", ["llama", "olmo", "olmo2"])
@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_exact(tmp_path, arch, tie):
    hf, cfg, state = tiny_causal_lm(arch, tie=tie)
    src = _save(hf, tmp_path / "hf")
    loader = assert_exact(convert(src, tmp_path / "m.parquet", dtype="float32"), state)
    assert loader.config == cfg
    meta = read_metadata(tmp_path / "m.parquet")
    assert set(meta.files) == {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    assert meta.files["tokenizer.json"] == (src / "tokenizer.json").read_bytes()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(meta.sources)
    assert re.fullmatch("[0-9a-f]{64}", meta.sources["model.safetensors"])


def test_sharded_safetensors(tmp_path):
    hf, _, state = tiny_causal_lm("olmo2")
    src = _save(hf, tmp_path / "hf", max_shard_size="20KB")
    assert (src / "model.safetensors.index.json").is_file()
    assert_exact(convert(src, tmp_path / "m.parquet", dtype="float32"), state)
    shards = [k for k in read_metadata(tmp_path / "m.parquet").sources if "-of-" in k]
    assert len(shards) > 1


def test_pytorch_model_bin(tmp_path):
    hf, _, state = tiny_causal_lm("llama")
    src = _save(hf, tmp_path / "hf")
    (src / "model.safetensors").unlink()
    torch.save(hf.state_dict(), src / "pytorch_model.bin")
    assert_exact(convert(src, tmp_path / "m.parquet", dtype="float32"), state)
    assert "pytorch_model.bin" in read_metadata(tmp_path / "m.parquet").sources


def test_clip_exact_and_tokenizer_from_vocab(tmp_path):
    hf, cfg, state = tiny_clip()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    write_clip_vocab(src, clip_bpe_vocab())  # vocab.json + merges.txt, no tokenizer.json
    loader = assert_exact(convert(src, tmp_path / "c.parquet", dtype="float32"), state)
    assert loader.config.vision == cfg.vision and loader.config.text == cfg.text
    assert loader.config.eos_token_id == cfg.eos_token_id
    assert loader.config.projection_dim == 24
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(loader.metadata.files["tokenizer.json"].decode())
    # OpenAI CLIP's ids for "a photo of a cat!" with <|startoftext|> and <|endoftext|>
    assert tok.encode("a photo of a cat!").ids == [49406, 320, 1125, 539, 320, 2368, 256, 49407]


def test_bert_sentence_transformers_settings(tmp_path):
    hf, cfg, state = tiny_bert()
    src = _save(hf, tmp_path / "hf")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (src / "modules.json").write_text(json.dumps(modules))
    (src / "1_Pooling").mkdir()
    pooling = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (src / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (src / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24}))
    loader = assert_exact(convert(src, tmp_path / "b.parquet", dtype="float32"), state)
    got = loader.config
    assert got.encoder == cfg.encoder
    assert (got.pooling, got.normalize, got.max_seq_length) == ("cls", False, 24)
    assert "modules.json" in loader.metadata.sources


def test_bert_normalize_module_and_pooler_kept_unused(tmp_path):
    import transformers as tf

    hf = tf.BertModel(
        tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=40)
    )  # fmt: skip
    src = _save(hf, tmp_path / "hf")
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}
    (src / "modules.json").write_text(
        json.dumps(
            [{"type": f"sentence_transformers.models.{k}", "path": p} for k, p in paths.items()]
        )
    )
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    loader = WeightLoader(convert(src, tmp_path / "b.parquet", dtype="float32"))
    assert loader.config.normalize is True and loader.config.pooling == "mean"
    assert not [n for n in loader.tensor_names if "pool" in n]
    assert "embed.token.weight" in loader.tensor_names
    pooler = {"unused/hf/pooler.dense.weight", "unused/hf/pooler.dense.bias"}
    assert pooler <= set(loader.unused_names)  # kept, not loaded into the model
    state = hf.state_dict()
    for name in pooler:
        upstream = name.removeprefix("unused/hf/")
        assert torch.equal(loader.get_layer(name), state[upstream])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
def test_storage_dtypes_close(tmp_path, dtype):
    hf, _, state = tiny_causal_lm("llama")
    src = _save(hf, tmp_path / "hf")
    got = WeightLoader(convert(src, tmp_path / f"{dtype}.parquet", dtype=dtype)).load_weights()
    tol = {"float16": 1e-3, "bfloat16": 8e-3, "int8": 1.6e-2}[dtype]
    for name, tensor in state.items():
        err = (got[name] - tensor).abs().max().item()
        assert err <= tol * max(tensor.abs().max().item(), 1e-6) + 1e-6, (name, err)
    assert read_metadata(tmp_path / f"{dtype}.parquet").storage_dtype == dtype


def test_family_override_must_agree_and_fills_gaps(tmp_path):
    hf, _, state = tiny_causal_lm("llama")
    src = _save(hf, tmp_path / "hf")
    from llm_compression.errors import ConversionError, UnsupportedFamilyError

    with pytest.raises(ConversionError, match="'llama' checkpoint.*family='bert'"):
        convert(src, tmp_path / "x.parquet", family="bert")
    cfg = json.loads((src / "config.json").read_text())
    del cfg["model_type"], cfg["architectures"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedFamilyError, match="neither model_type nor architectures"):
        convert(src, tmp_path / "x.parquet")
    assert_exact(convert(src, tmp_path / "x.parquet", family="llama", dtype="float32"), state)


def test_float32_store_keeps_bits_of_bfloat16_source(tmp_path):
    hf, _, state = tiny_causal_lm("llama")
    src = _save(hf.to(torch.bfloat16), tmp_path / "hf")
    got = WeightLoader(convert(src, tmp_path / "m.parquet", dtype="float32")).load_weights()
    for name, tensor in state.items():
        assert np.array_equal(got[name].numpy(), tensor.to(torch.bfloat16).float().numpy()), name


def test_chat_template_jinja_folded_into_tokenizer_config(tmp_path):
    hf, _, _ = tiny_causal_lm("llama")
    src = _save(hf, tmp_path / "hf")
    (src / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    meta = read_metadata(convert(src, tmp_path / "m.parquet"))
    tok_cfg = json.loads(meta.files["tokenizer_config.json"])
    assert tok_cfg["chat_template"] == "{{ messages[0]['content'] }}"
    assert tok_cfg["eos_token"] == "<|im_end|>"  # the rest of tokenizer_config.json is kept
    assert "chat_template.jinja" in meta.sources
