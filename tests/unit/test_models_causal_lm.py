"""Causal LMs (Llama with GQA, OLMo-1, OLMo-2) against tiny random HuggingFace models."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import tiny_causal_lm

from llm_compression.core.generation import SamplingConfig, sample
from llm_compression.errors import InputError, MissingTensorError
from llm_compression.families import CausalLM, build_model
from llm_compression.loader import load_weights_into

ARCHS = [("llama", False), ("llama", True), ("olmo", False), ("olmo2", False), ("olmo2", True)]


def pair(arch="llama", tie=False, **kw):
    hf, cfg, state = tiny_causal_lm(arch, tie=tie, **kw)
    return hf, load_weights_into(build_model(cfg), state)


@pytest.fixture(scope="module", params=ARCHS, ids=lambda p: f"{p[0]}-tie{p[1]}")
def models(request):
    return pair(*request.param)


def test_logits_match_hf_batch_with_padding(models):
    hf, ours = models
    ids = torch.randint(3, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    att = torch.ones_like(ids)
    att[1, 8:] = 0
    att[2, 4:] = 0
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=att).logits
        got = ours.logits(ids, mask=att)
    keep = att.bool()
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(ours(ids[:1]), hf(ids[:1]).logits, atol=1e-5, rtol=1e-5)


def test_greedy_generation_token_identical_to_hf(models):
    hf, ours = models
    prompt = [5, 17, 33, 8, 61, 9]
    ref = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=20,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()
    if 2 in ref:  # the reference ran past our end-of-sequence id (2): we stop there
        ref = ref[: ref.index(2)]
    got = ours.generate_ids(prompt, max_new_tokens=20)
    assert got == ref


def test_sampling_matches_hf_with_same_seed():
    hf, ours = pair("olmo2")
    prompt = [5, 17, 33, 8]
    options = dict(temperature=0.8, top_k=20, top_p=0.9)
    torch.manual_seed(123)
    ref = hf.generate(
        torch.tensor([prompt]), max_new_tokens=15, do_sample=True, eos_token_id=None,
        pad_token_id=0, **options,
    )[0, len(prompt) :].tolist()  # fmt: skip
    got = ours.generate_ids(prompt, max_new_tokens=15, seed=123, **options)
    assert got == ref[: len(got)] and (len(got) == 15 or ref[len(got)] == 2)


def test_sampling_reproducible_with_seed_and_topk1_is_greedy():
    _, ours = pair("llama")
    prompt = [4, 5, 6]
    a = ours.generate_ids(prompt, max_new_tokens=12, temperature=1.5, seed=7)
    b = ours.generate_ids(prompt, max_new_tokens=12, temperature=1.5, seed=7)
    c = ours.generate_ids(prompt, max_new_tokens=12, temperature=1.5, seed=8)
    assert a == b and a != c
    greedy = ours.generate_ids(prompt, max_new_tokens=12)
    assert ours.generate_ids(prompt, max_new_tokens=12, temperature=1.5, top_k=1, seed=3) == greedy
    assert (
        ours.generate_ids(prompt, max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=3) == greedy
    )


def test_sample_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 2.8]])
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample(logits, SamplingConfig(temperature=5.0, top_k=2), gen)) for _ in range(200)}
    assert seen == {1, 2}
    probs = logits.softmax(-1)[0]  # top-p keeps the smallest set with mass >= p
    p = float(probs[1] + probs[2]) - 1e-4
    seen = {int(sample(logits, SamplingConfig(temperature=1.0, top_p=p), gen)) for _ in range(300)}
    assert seen == {1, 2}


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=-1.0),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(max_new_tokens=0),
    ],
)
def test_bad_sampling_options_raise(options):
    _, ours = pair("llama")
    with pytest.raises(InputError):
        ours.generate_ids([3, 4], **options)


def test_prompt_limits():
    _, ours = pair("llama")
    with pytest.raises(InputError, match="context"):
        ours.generate_ids(list(range(3, 3 + ours.context_length)))
    with pytest.raises(InputError, match="no tokens"):
        ours.generate_ids([])
    with pytest.raises(InputError, match="vocabulary"):
        ours.generate_ids([5, 1000])
    # generation stops at the context length rather than overflowing it
    assert len(ours.generate_ids([5] * (ours.context_length - 3), max_new_tokens=50)) <= 3
    with pytest.raises(InputError, match="tokenizer"):
        ours.generate("hello")


def test_meta_build_and_strict_assign():
    _, cfg, state = tiny_causal_lm("llama", tie=True)
    model = build_model(cfg)
    assert isinstance(model, CausalLM) and all(p.is_meta for p in model.parameters())
    assert "lm_head.weight" not in model.state_dict()  # tied to token_embed
    with pytest.raises(MissingTensorError, match="missing"):
        load_weights_into(build_model(cfg), {k: v for k, v in state.items() if "layers.1" not in k})
    with pytest.raises(MissingTensorError, match="unexpected"):
        load_weights_into(
            build_model(cfg), {**state, "lm_head.weight": state["token_embed.weight"]}
        )
    model = load_weights_into(model, state)
    assert not any(p.is_meta or p.requires_grad for p in model.parameters())


def test_bfloat16_compute_dtype():
    _, cfg, state = tiny_causal_lm("llama")
    model = load_weights_into(build_model(cfg), state, dtype=torch.bfloat16)
    assert model.token_embed.weight.dtype == torch.bfloat16
    assert len(model.generate_ids([5, 6, 7], max_new_tokens=5)) == 5
