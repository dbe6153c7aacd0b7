"""Inputs that used to end in torch's or tokenizers' untyped errors now raise typed ones (10.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hostile_helpers import BERT, CLIP, LLAMA, model_file

from llm_compression.errors import ConfigError, InputError, LLMCompressionError, WrongFamilyError
from llm_compression.loader import WeightLoader, load_model
from llm_compression.provider.modalities import embed_texts

SURROGATE = "caf\ud800e"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: model_file(root / f"{name}.parquet", cfg) for name, cfg in
            (("bert", BERT), ("clip", CLIP), ("llama", LLAMA))}  # fmt: skip


@pytest.fixture(scope="module")
def models(files):
    return {name: load_model(path) for name, path in files.items()}


def _typed(error_type, call, match=None):
    with pytest.raises(error_type, match=match) as info:
        call()
    assert isinstance(info.value, LLMCompressionError)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: embed_texts(m["bert"], [SURROGATE]),
        lambda m: embed_texts(m["clip"], [SURROGATE]),
        lambda m: m["llama"].generate(SURROGATE, max_new_tokens=2),
        lambda m: m["llama"].generate(SURROGATE, max_new_tokens=2, chat=True),
        lambda m: list(m["llama"].stream(SURROGATE, max_new_tokens=2)),
        lambda m: m["bert"].tokenizer.encode(SURROGATE),
    ],
    ids=["minilm", "clip", "generate", "chat", "stream", "tokenizer"],
)
def test_lone_surrogate_is_an_input_error(models, call):
    _typed(InputError, lambda: call(models), r"'\\ud800' at character \d+.*lone surrogate")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"seed": "x", "temperature": 0.7}, "seed must be an integer"),
        ({"seed": -1, "temperature": 0.7}, "seed must be an integer"),
        ({"seed": 2**64, "temperature": 0.7}, "seed must be an integer"),
        ({"seed": 1.5, "temperature": 0.7}, "seed must be an integer"),
        ({"temperature": "hot"}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"top_p": "x", "temperature": 0.7}, "top_p must be in"),
    ],
)
def test_bad_sampling_options_are_input_errors(models, options, match):
    _typed(InputError, lambda: models["llama"].generate("hi", max_new_tokens=2, **options), match)


def test_numpy_seed_still_works(models):
    lm = models["llama"]
    a = lm.generate("hi", max_new_tokens=3, temperature=0.9, seed=np.int64(3))
    assert a == lm.generate("hi", max_new_tokens=3, temperature=0.9, seed=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "nonsense", None])
def test_unusable_device_is_a_config_error(files, device):
    _typed(ConfigError, lambda: WeightLoader(files["bert"], device=device), "device=.*'cpu'")
    _typed(ConfigError, lambda: load_model(files["bert"], device=device))


@pytest.mark.parametrize(
    "name, call, needs",
    [
        ("bert", lambda m: m.transcribe("x.wav"), "a Whisper weight file"),
        ("clip", lambda m: m.generate("hi"), "a causal LM weight file"),
        ("llama", lambda m: m.encode_image(torch.zeros(1, 3, 4, 4)), "a CLIP weight file or a Mob"),
        ("bert", lambda m: m.encode_audio(torch.zeros(1, 80, 3000), None), "a Whisper weight file"),
        ("llama", lambda m: m.encode_text(torch.zeros(1, 2)), "a CLIP weight file or a sentence"),
        ("bert", lambda m: m.classify(["x.png"]), "a MobileNetV2 image-classifier"),
    ],
)
def test_another_familys_method_is_a_wrong_family_error(models, name, call, needs):
    with pytest.raises(WrongFamilyError, match=f"family .*; .* needs {needs}") as info:
        call(models[name])
    assert isinstance(info.value, AttributeError)  # so hasattr() stays False


def test_hasattr_and_real_attributes_are_unchanged(models):
    assert not hasattr(models["bert"], "transcribe")
    assert not hasattr(models["bert"], "no_such_thing")
    assert hasattr(models["llama"], "generate") and hasattr(models["clip"], "encode_image")
    assert models["bert"].layers[0] is not None  # nn.Module attribute lookup still works
