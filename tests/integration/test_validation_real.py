"""Precision validation against HF transformers on real weights and full-size random-init models.

Real: all-MiniLM-L6-v2 (float32, float16, int8 stores), Whisper base (CTranslate2; embeddings and
the transcription of espeak-ng speech), SmolLM2-135M-Instruct (GGUF; greedy 64 tokens).
Random init, real shapes: CLIP ViT-B/32 (``CLIPModel(CLIPConfig())``), OLMo-1 and OLMo-2 at the
1B width (hidden 2048, 16 heads, mlp 8192, full vocabularies) with 2 layers to keep time down.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm_compression.convert import convert
from llm_compression.validation import ValidationInputs, build_reference, validate
from llm_compression.validation.inputs import CHAT_PROMPTS, PROMPTS, SPEECH_TEXT, default_inputs

pytestmark = pytest.mark.integration
OLMO_LAYERS = 2


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("validation")


def _outputs(report) -> dict:
    return {o.name: o for o in report.outputs}


@pytest.fixture(scope="module")
def minilm():
    from llm_compression.weights import packaged_minilm

    src = packaged_minilm()
    return src, build_reference(src, "bert", {})  # one HF model for the three stores


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_minilm(work, minilm, dtype):
    src, reference = minilm
    parquet = convert(src, work / f"minilm-{dtype}.parquet", dtype=dtype)
    report = validate(parquet, src, reference=reference)
    out = _outputs(report)
    assert report.passed and out["token_ids"].identical  # incl. the sentence past 256 tokens
    assert out["sentence_embedding"].cosine >= report.thresholds.min_cosine
    assert out["sentence_embedding"].top1_agreement is not None


def test_whisper_base(work):
    from llm_compression.weights import packaged_whisper_base

    src = packaged_whisper_base()
    report = validate(convert(src, work / "whisper-base.parquet", dtype="float32"), src)
    out = _outputs(report)
    assert out["audio_embedding"].cosine >= 0.99999 and out["encoder_states"].cosine >= 0.99999
    assert out["transcription"].identical, out["transcription"].detail
    assert "fox" in out["transcription"].detail.lower()  # the speech of SPEECH_TEXT was decoded
    assert "fox" in SPEECH_TEXT


def test_smollm2_greedy_64(work):
    from llm_compression.weights import packaged_smollm2

    src = packaged_smollm2()
    inputs = ValidationInputs(prompts=PROMPTS[:2], chat_prompts=CHAT_PROMPTS[:1])  # time budget
    report = validate(convert(src, work / "smollm2.parquet", dtype="float32"), src, inputs=inputs)
    out = _outputs(report)
    assert out["prompt_token_ids"].identical
    assert out["greedy_64_tokens"].identical, out["greedy_64_tokens"].detail
    assert "chat" in out["greedy_64_tokens"].detail  # the chat template took part
    assert out["prefill_logits"].cosine >= 0.99999


def test_clip_vit_b32_random(work):
    from llm_compression.convert.random_init import save_random_clip

    src = save_random_clip(work / "clip-src")
    report = validate(convert(src, work / "clip.parquet", dtype="float32"), src)
    out = _outputs(report)
    assert out["image_embedding"].cosine >= 0.99999 and out["text_embedding"].cosine >= 0.99999
    assert out["text_token_ids"].identical  # incl. the sentence past 77 tokens (truncated)
    vision_only = validate(
        work / "clip.parquet", src, inputs=replace(default_inputs("clip"), sentences=())
    )
    assert [o.name for o in vision_only.outputs] == ["image_embedding"]


@pytest.mark.parametrize("version", [1, 2])
def test_olmo_random_real_width(work, version):
    from llm_compression.convert.random_init import save_random_olmo

    src = save_random_olmo(work / f"olmo{version}-src", version=version, n_layers=OLMO_LAYERS)
    parquet = convert(src, work / f"olmo{version}.parquet", dtype="float32")
    inputs = ValidationInputs(prompts=PROMPTS[:1], chat_prompts=())
    report = validate(parquet, src, inputs=inputs)
    out = _outputs(report)
    assert out["prefill_logits"].cosine >= 0.99999 and out["prefill_logits"].top1_agreement == 1.0
    assert out["greedy_64_tokens"].identical, out["greedy_64_tokens"].detail
