"""Validation against HF transformers on tiny random models: pass on the same weights, fail on
different ones; metrics, thresholds, the report and the inverted Whisper map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hf_tiny import tiny_bert, tiny_causal_lm, tiny_tokenizer_files

from llm_compression.cli import main
from llm_compression.convert import convert
from llm_compression.errors import ConfigError, ConversionError, InputError, ValidationFailedError
from llm_compression.validation import Thresholds, ValidationInputs, validate
from llm_compression.validation.compare import (
    compare_sequences,
    compare_texts,
    compare_vectors,
    cosines,
    nearest_agreement,
)

PROMPTS = ValidationInputs(
    prompts=("Hello world", "one two three"), chat_prompts=("Hi",), max_new_tokens=8
)
SENTENCES = ValidationInputs(
    sentences=("a b c", "d e", "f g h i j k l m n o p q r s t u v w x y z")
)


def _llama_folder(path, seed: int):
    hf, _, _ = tiny_causal_lm("llama", seed=seed, vocab_size=300)
    hf.save_pretrained(path)
    for name, data in tiny_tokenizer_files().items():
        (path / name).write_bytes(data)
    return path


def _bert_folder(path, seed: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    hf, _, _ = tiny_bert(seed=seed)
    hf.save_pretrained(path)
    vocab = {
        t: i
        for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"abcdefghijklmnopqrstuvwxyz"])
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    (path / "tokenizer.json").write_text(tok.to_str())
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))  # fmt: skip
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    src = _llama_folder(root / "src", seed=0)
    other = _llama_folder(root / "other", seed=1)
    return src, other, convert(src, root / "w32.parquet", dtype="float32")


def test_llama_same_weights_pass(llama):
    src, _, parquet = llama
    report = validate(parquet, src, inputs=PROMPTS)
    names = {o.name: o for o in report.outputs}
    assert report.passed and report.dtype == "float32"
    assert names["prompt_token_ids"].identical
    assert (
        names["prefill_logits"].cosine >= 0.99999 and names["prefill_logits"].top1_agreement == 1.0
    )
    assert names["greedy_8_tokens"].identical and names["greedy_8_tokens"].required
    assert "chat 'Hi'" in names["greedy_8_tokens"].detail


def test_llama_other_weights_fail_and_cli_exits_1(llama, tmp_path, capsys):
    _, other, parquet = llama
    with pytest.raises(ValidationFailedError) as info:
        validate(parquet, other, inputs=PROMPTS)
    assert not info.value.report.passed
    assert "prefill_logits" in [o.name for o in info.value.report.failures()]
    out = tmp_path / "r.json"
    assert main(["validate", str(parquet), "--reference", str(other), "--json", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert json.loads(out.read_text())["passed"] is False


def test_bert_dtypes(tmp_path):
    src = _bert_folder(tmp_path / "src", seed=0)
    for dtype, floor in (("float32", 0.99999), ("float16", 0.9999), ("int8", 0.99)):
        report = validate(
            convert(src, tmp_path / f"{dtype}.parquet", dtype=dtype), src, inputs=SENTENCES
        )
        emb = {o.name: o for o in report.outputs}["sentence_embedding"]
        assert report.passed, report.table()
        assert report.thresholds.min_cosine == floor and emb.cosine >= floor
        assert emb.top1_agreement is not None
    assert {o.name: o for o in report.outputs}["token_ids"].identical  # truncated at 12 on both
    with pytest.raises(InputError, match="nothing a bert model takes"):
        validate(tmp_path / "int8.parquet", src, inputs=ValidationInputs(sentences=()))
    other = _bert_folder(tmp_path / "other", seed=3)
    assert not validate(
        tmp_path / "float32.parquet", other, inputs=SENTENCES, raise_on_failure=False
    ).passed


def test_metrics_and_thresholds():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert np.allclose(cosines(a, a * 3), 1.0)
    assert cosines(a, [[0.0, 1.0], [0.0, 1.0]])[0] == pytest.approx(0.0)
    assert nearest_agreement(np.eye(3), np.eye(3)) == 1.0
    th = Thresholds.for_dtype("float32")
    worst = compare_vectors("x", a, a + [[0.0, 0.01], [0.0, 0.0]], th)
    assert (
        not worst.passed and "input 0" in worst.detail and worst.max_abs_diff == pytest.approx(0.01)
    )
    assert (
        Thresholds.for_dtype("bfloat16").min_cosine == 0.999
        and not Thresholds.for_dtype("int8").exact
    )
    with pytest.raises(ConfigError, match="float32"):
        Thresholds.for_dtype("float8")


def test_sequences_and_texts_report_first_divergence():
    th32, th16 = Thresholds.for_dtype("float32"), Thresholds.for_dtype("float16")
    r = compare_sequences("g", [[1, 2, 3, 4]], [[1, 2, 9, 4]], th32)
    assert not r.passed and r.required and "at new token 2" in r.detail
    assert not compare_sequences("g", [[1, 2]], [[1, 2, 3]], th32).passed  # one stopped early
    assert not compare_sequences("g", [[1]], [[2]], th16).required  # float16: reported only
    t = compare_texts("t", ["Hello world."], ["Hello, world."], th32)
    assert not t.passed and "Hello, world." in t.detail
    with pytest.raises(ValidationFailedError):
        compare_vectors("x", np.ones((2, 3)), np.ones((2, 4)), th32)


def test_whisper_hf_map_inverts():
    import transformers as tf

    from llm_compression.convert.mapping import build_plan
    from llm_compression.families.whisper.convert import HF_MAP
    from llm_compression.validation.hf_whisper import invert_map, rename

    cfg = tf.WhisperConfig(
        vocab_size=60, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_target_positions=12, pad_token_id=0, bos_token_id=1,
        eos_token_id=1, decoder_start_token_id=2,
    )  # fmt: skip
    state = {k: v.numpy() for k, v in tf.WhisperForConditionalGeneration(cfg).state_dict().items()}
    plan = build_plan({k: v.shape for k, v in state.items()}, state.__getitem__, HF_MAP, source="t")
    back = rename({k: item.load() for k, item in plan.items()}, HF_MAP)
    assert set(back) == set(state) - {"proj_out.weight"}
    assert all(np.array_equal(back[k], state[k]) for k in back)
    with pytest.raises(ConversionError, match="no upstream name"):
        rename({"decoder.nonsense": np.zeros(1)}, HF_MAP)
    assert len(invert_map(HF_MAP)) == sum(v is not None for v in HF_MAP.values())
    assert torch.is_tensor(torch.from_numpy(back["model.encoder.conv1.weight"]))
