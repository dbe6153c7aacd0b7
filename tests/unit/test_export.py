"""export(): a weight file back to a Hugging Face folder that transformers loads.

Round trips from tiny random checkpoints: every source tensor (a BertModel's pooler included) comes
back bit for bit from a float32 file, within rounding from float16 / bfloat16 / int8 files, and the
model transformers loads from the export computes what the source model computes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_tiny import _seed_model, tiny_causal_lm, tiny_tokenizer_files
from safetensors import safe_open

from llm_compression.cli import main
from llm_compression.convert import convert, export
from llm_compression.loader import WeightLoader, load_model

tf = pytest.importorskip("transformers")


def _save(hf, folder):
    hf.save_pretrained(folder)
    for name, data in tiny_tokenizer_files().items():
        (folder / name).write_bytes(data)
    return folder


def _source_tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


@pytest.fixture(scope="module")
def bert_with_pooler(tmp_path_factory):
    cfg = tf.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, layer_norm_eps=1e-12,
    )  # fmt: skip
    hf = _seed_model(tf.BertModel(cfg), seed=3)  # add_pooling_layer=True (the default)
    return hf, _save(hf, tmp_path_factory.mktemp("bert") / "hf")


def test_bert_float32_round_trip_keeps_every_tensor(tmp_path, bert_with_pooler):
    hf, src = bert_with_pooler
    source = _source_tensors(src)
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(source)
    path = convert(src, tmp_path / "b.parquet", dtype="float32")
    loader = WeightLoader(path)
    assert {"unused/hf/pooler.dense.weight", "unused/hf/pooler.dense.bias"} <= set(
        loader.unused_names
    )
    load_model(path)  # strict: the unused pooler is skipped
    out = export(path, tmp_path / "out")
    exported = _source_tensors(out)
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        assert torch.equal(exported[name], tensor), name
    back = tf.BertModel.from_pretrained(out).eval()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want, got = hf(input_ids=ids, attention_mask=mask), back(input_ids=ids, attention_mask=mask)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
    assert torch.equal(got.pooler_output, want.pooler_output)
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]


@pytest.mark.parametrize(("dtype", "atol"), [("float16", 1e-3), ("bfloat16", 8e-3), ("int8", 0.02)])
def test_bert_rounded_files_come_back_within_rounding(tmp_path, bert_with_pooler, dtype, atol):
    _, src = bert_with_pooler
    source = _source_tensors(src)
    out = export(convert(src, tmp_path / "b.parquet", dtype=dtype), tmp_path / "out")
    exported = _source_tensors(out)
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        assert exported[name].dtype == tensor.dtype
        # relative to each tensor's scale: int8 rows are within max|row| / 254
        scale = float(tensor.abs().max()) or 1.0
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=atol * scale, msg=name)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_round_trip_and_logits(tmp_path, tie):
    hf, _, _ = tiny_causal_lm("llama", tie=tie)
    src = _save(hf, tmp_path / "hf")
    out = export(convert(src, tmp_path / "m.parquet", dtype="float32"), tmp_path / "out")
    source, exported = _source_tensors(src), _source_tensors(out)
    assert sorted(exported) == sorted(source)
    assert all(torch.equal(exported[k], v) for k, v in source.items())
    back = tf.LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 9, 30, 2, 44]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_cli_export_and_no_transformers_import(tmp_path, bert_with_pooler, capsys):
    _, src = bert_with_pooler
    path = convert(src, tmp_path / "b.parquet", dtype="float16")
    assert main(["export", str(path), str(tmp_path / "cli")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    code = (
        "import sys, llm_compression as lc; "
        f"lc.export({str(path)!r}, {str(tmp_path / 'lib')!r}); "
        "assert 'transformers' not in sys.modules, 'export imported transformers'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    a, b = _source_tensors(tmp_path / "cli"), _source_tensors(tmp_path / "lib")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_clip_round_trip(tmp_path):
    from hf_tiny import tiny_clip

    from llm_compression.families.clip import write_clip_vocab
    from llm_compression.weights import clip_bpe_vocab

    hf, _, _ = tiny_clip()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    write_clip_vocab(src, clip_bpe_vocab())
    out = export(convert(src, tmp_path / "c.parquet", dtype="float32"), tmp_path / "out")
    source, exported = _source_tensors(src), _source_tensors(out)
    assert sorted(exported) == sorted(source)
    assert all(torch.equal(exported[k], v) for k, v in source.items())
    back = tf.CLIPModel.from_pretrained(out).eval()
    ids, pixels = torch.tensor([[3, 7, 9, 49], [3, 49, 0, 0]]), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pixels)
        got = back(input_ids=ids, pixel_values=pixels)
    assert torch.equal(got.text_embeds, want.text_embeds)
    assert torch.equal(got.image_embeds, want.image_embeds)


def test_whisper_round_trips_from_hf_and_ctranslate2(tmp_path):
    from test_convert_whisper import _ct2_folder, _ct2_variables, _tokenizer_json
    from test_convert_whisper import tiny_whisper as make_whisper

    hf = make_whisper.__wrapped__()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    (src / "tokenizer.json").write_bytes(_tokenizer_json())
    out = export(convert(src, tmp_path / "w.parquet", dtype="float32"), tmp_path / "out")
    source, exported = _source_tensors(src), _source_tensors(out)
    assert sorted(exported) == sorted(source)
    assert all(torch.equal(exported[k], v) for k, v in source.items())
    want = {k: v.to(torch.float16).float() for k, v in hf.state_dict().items()}
    ct2 = _ct2_folder(tmp_path, _ct2_variables(hf.state_dict()))
    out = export(convert(ct2, tmp_path / "c.parquet", dtype="float32"), tmp_path / "ct2-out")
    back = tf.WhisperForConditionalGeneration.from_pretrained(out).eval()
    got = back.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert back.config.num_mel_bins == 8 and back.config.max_target_positions == 16
