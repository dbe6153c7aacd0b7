"""Text generation: tokenizer round trip, streaming, stop strings, chat template."""

from __future__ import annotations

import pytest
import torch
from hf_generate import hf_left_padded
from hf_tiny import tiny_causal_lm, tiny_tokenizer_files

from llm_compression.core.generation import TextStreamer
from llm_compression.errors import InputError
from llm_compression.families import build_model
from llm_compression.loader import load_weights_into
from llm_compression.preprocess.text import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_files(tiny_tokenizer_files())


@pytest.fixture(scope="module")
def model(tokenizer):
    _, cfg, state = tiny_causal_lm("olmo2", vocab_size=tokenizer.vocab_size, seed=3)
    m = load_weights_into(build_model(cfg), state)
    m.tokenizer = tokenizer
    return m


PROMPT = "The quick brown fox"


def test_generate_is_decoded_generate_ids(model, tokenizer):
    ids = model.generate_ids(tokenizer.encode(PROMPT), max_new_tokens=24)
    assert model.generate(PROMPT, max_new_tokens=24) == tokenizer.decode(ids)


@pytest.mark.parametrize("options", [{}, dict(temperature=1.2, top_p=0.95, seed=5)])
def test_stream_joins_to_generate(model, options):
    pieces = list(model.stream(PROMPT, max_new_tokens=30, **options))
    assert len(pieces) > 1
    assert "".join(pieces) == model.generate(PROMPT, max_new_tokens=30, **options)


def test_stop_string_trims_output(model):
    full = model.generate(PROMPT, max_new_tokens=40, temperature=1.0, seed=11)
    assert len(full) > 12
    stop = full[8:11]
    expected = full[: full.find(stop)]
    options = dict(max_new_tokens=40, temperature=1.0, seed=11)
    assert model.generate(PROMPT, stop=stop, **options) == expected
    assert "".join(model.stream(PROMPT, stop=[stop, "\x00never"], **options)) == expected


def test_streamer_yields_whole_characters(tokenizer):
    text = "Café 日本 🙂 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # multi-byte characters span several byte tokens
    streamer = TextStreamer(tokenizer)
    pieces = [streamer.push(i) for i in ids] + [streamer.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_streamer_holds_back_possible_stop_prefix(tokenizer):
    ids = tokenizer.encode("The quick brown fox jumps", add_special_tokens=False)
    streamer = TextStreamer(tokenizer, ["fox"])
    pieces = []
    for i in ids:
        pieces.append(streamer.push(i))
        assert "f" not in "".join(pieces)  # "f" could start "fox": never released early
        if streamer.stopped:
            break
    assert streamer.stopped and "".join(pieces) == "The quick brown "


def test_chat_template(model, tokenizer):
    messages = [{"role": "user", "content": "Hello"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = model.generate_ids(
        tokenizer.encode(rendered, add_special_tokens=False), max_new_tokens=10
    )
    assert model.generate("Hello", chat=True, max_new_tokens=10) == tokenizer.decode(ids)
    assert model.generate(messages, chat=True, max_new_tokens=10) == tokenizer.decode(ids)


def test_chat_without_template_raises(model):
    plain = Tokenizer.from_files(tiny_tokenizer_files(chat=False))
    _, cfg, state = tiny_causal_lm("llama", vocab_size=plain.vocab_size)
    m = load_weights_into(build_model(cfg), state)
    m.tokenizer = plain
    with pytest.raises(InputError, match="chat template"):
        m.generate("Hello", chat=True)


@pytest.mark.parametrize("prompt", ["", None, 42, ["a", ""], [], [{"role": "user"}]])
def test_bad_prompts_raise(model, prompt):
    with pytest.raises(InputError):
        model.generate(prompt)


def test_bad_stop_raises(model):
    with pytest.raises(InputError, match="stop"):
        model.stream(PROMPT, stop=[1, 2])


BATCH = ["The quick brown fox", "A", "Hello there, how are", "fox"]


def test_batch_texts_equal_each_prompt_alone(model):
    alone = [model.generate(p, max_new_tokens=16) for p in BATCH]
    assert model.generate(BATCH, max_new_tokens=16) == alone
    assert model.generate(tuple(BATCH[:1]), max_new_tokens=16) == alone[:1]


def test_batch_stop_strings_end_each_row(model):
    alone = [model.generate(p, max_new_tokens=20) for p in BATCH]
    stop = alone[0][3:6]
    expected = [model.generate(p, max_new_tokens=20, stop=stop) for p in BATCH]
    assert expected[0] == alone[0][: alone[0].find(stop)]
    assert model.generate(BATCH, max_new_tokens=20, stop=stop) == expected


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
def test_batch_ids_equal_alone_and_hf_left_padded(arch):

    hf, cfg, state = tiny_causal_lm(arch, seed=4)
    m = load_weights_into(build_model(cfg), state)
    prompts = [[5, 17, 33, 8, 61, 9], [3, 4], [7, 8, 9, 10], [11]]
    batch = m.generate_ids(prompts, max_new_tokens=12)
    assert batch == [m.generate_ids(p, max_new_tokens=12) for p in prompts]
    out = hf_left_padded(hf, prompts, pad=0, max_new_tokens=12)
    eos = cfg.eos_token_ids[0]
    assert batch == [row[: row.index(eos)] if eos in row else row for row in out]


def test_greedy_picks_torch_argmax_first_maximum():
    """``core.generation.greedy`` (numpy's argmax on the CPU) gives torch's argmax: the first of
    equal maxima, -inf skipped, any float dtype, one row or several."""
    from llm_compression.core.generation import greedy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1000, generator=g)
    logits[1, [7, 300, 999]] = 50.0  # ties: the first wins
    logits[2, :] = float("-inf")
    logits[2, 42] = -1e30
    logits[3, 10:] = logits[3, :10].max()  # a long run of equal maxima
    for x in (logits, logits.bfloat16(), logits[0]):
        got = greedy(x)
        assert got.dtype == torch.int64 and torch.equal(got, x.argmax(dim=-1))
    assert greedy(logits)[[1, 2]].tolist() == [7, 42]


def test_min_new_tokens_holds_back_end_of_sequence_as_hf_does(monkeypatch):
    """With an end-of-sequence id the model picks at step 2, ``min_new_tokens=6`` gives HF's
    tokens (the id's logit masked until then, the next best taken), alone and in a batch;
    0 stops at the id; a negative or a minimum above the maximum is a typed error."""
    hf, cfg, state = tiny_causal_lm("llama", seed=4)
    m = load_weights_into(build_model(cfg), state)
    prompt = [5, 17, 33, 8, 61, 9]
    free = m.generate_ids(prompt, max_new_tokens=12)
    eos = free[2]
    monkeypatch.setattr(m, "_eos_ids", lambda: {eos})
    assert m.generate_ids(prompt, max_new_tokens=12) == free[:2]
    held = m.generate_ids(prompt, max_new_tokens=12, min_new_tokens=6)
    x = torch.tensor([prompt])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, min_new_tokens=6,
                       eos_token_id=eos, pad_token_id=0, do_sample=False)[0, len(prompt):].tolist()  # fmt: skip
    assert held == (want[: want.index(eos)] if eos in want else want)
    assert len(held) >= 6 and held[2] != eos
    assert m.generate_ids([prompt, [3, 4]], max_new_tokens=12, min_new_tokens=6)[0] == held
    for bad in (-1, 13, 2.5):
        with pytest.raises(InputError, match="min_new_tokens"):
            m.generate_ids(prompt, max_new_tokens=12, min_new_tokens=bad)
