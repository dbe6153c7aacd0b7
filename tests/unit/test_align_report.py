"""Phase 2: soft prompts through the frozen LLM, and a report that always validates."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from hf_tiny import tiny_causal_lm, tiny_tokenizer_files

from llm_compression.align import (
    AlignModel,
    AlignModelConfig,
    Features,
    LossConfig,
    Stage,
    Trainer,
    report_schema,
    validate_report,
)
from llm_compression.align.report import (
    BEHAVIOURS,
    EMOTIONS,
    Pieces,
    ReportObjective,
    _Prefix,
    _sequence_nll,
    soft_prompts,
    write_report,
)  # fmt: skip
from llm_compression.align.trainer import Objective
from llm_compression.errors import InputError
from llm_compression.families import build_model
from llm_compression.loader import load_weights_into
from llm_compression.preprocess.text import Tokenizer

MODALITIES = ("image", "audio", "text")
SUBSETS = [s for k in (1, 2, 3) for s in itertools.combinations(MODALITIES, k)]


@pytest.fixture(scope="module")
def llm():
    tok = Tokenizer.from_files(tiny_tokenizer_files())
    _, cfg, state = tiny_causal_lm("llama", vocab_size=tok.vocab_size, seed=1)
    model = load_weights_into(build_model(cfg), state).eval()
    model.tokenizer = tok
    return model


@pytest.fixture(scope="module")
def model():
    cfg = AlignModelConfig(
        inputs=(("image", 12), ("audio", 10), ("text", 8)), dim=16, hidden=16, prompt_tokens=2,
        llm_dim=32, labels=("cat", "horse"), emotions=EMOTIONS, behaviours=BEHAVIOURS,
    )  # fmt: skip
    torch.manual_seed(0)
    m = AlignModel(cfg).eval()
    m.prototypes.copy_(torch.nn.functional.normalize(torch.randn(2, 16), dim=-1))
    return m


def test_prefix_embeds_equal_the_same_tokens_given_as_ids(llm):
    ids = torch.tensor([[5, 17, 40, 9, 33]])
    full = llm.logits(ids)
    prefix = llm.token_embed(ids[:, :2])
    split = llm.logits(ids[:, 2:], prefix_embeds=prefix)
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-5)


def test_missing_tokens_are_learned_not_zeros(model):
    aligned = {"image": torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)}
    soft = soft_prompts(model, aligned, {"image": torch.tensor([True, False])})
    assert soft.shape == (2, 3 * 2, 32)
    torch.testing.assert_close(soft[1, :2], model.projector.missing["image"])
    assert soft[1, 2:].abs().sum() > 0  # audio and text: <MISSING>, not zeros
    torch.testing.assert_close(soft[0, 2:4], model.projector.missing["audio"])


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_report_validates_for_every_modality_subset(model, llm, subset):
    pieces = Pieces.build(llm.tokenizer)
    inputs = {m: torch.randn(1, d) for m, d in model.config.inputs if m in subset}
    report = write_report(model, llm, pieces, model.embed(inputs))
    assert validate_report(json.loads(json.dumps(report)), MODALITIES) == []
    assert {m for m, e in report["evidence"].items() if e["present"]} == set(subset)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, report_schema(MODALITIES))


def test_cached_prefix_scores_equal_whole_sequences(model, llm):
    """Constrained decoding scores options on the prefix's cached keys and values; the result
    equals running prompt + prefix + option through the LLM from scratch."""
    pieces = Pieces.build(llm.tokenizer)
    present = {"image": torch.tensor([True])}
    soft = soft_prompts(model, model.embed({"image": torch.randn(1, 12)}), present)
    written = pieces.prompt + pieces.open + pieces.emotions["playful"] + pieces.mid
    prefix = _Prefix(llm, soft, pieces.prompt + pieces.open, soft.shape[1] + pieces.max_len())
    prefix.extend(written[len(pieces.prompt + pieces.open) :])
    options = {**pieces.behaviours, "end": pieces.close}
    assert max(len(ids) for ids in options.values()) > 1  # multi-token options are exercised
    scores = prefix.score(options)
    nll = _sequence_nll(llm, soft.expand(len(options), -1, -1), written, list(options.values()))
    torch.testing.assert_close(torch.tensor(list(scores.values())), -nll, rtol=0, atol=2e-5)


def test_no_input_is_a_typed_error(model, llm):
    with pytest.raises(InputError, match="at least one"):
        write_report(model, llm, Pieces.build(llm.tokenizer), {})


def test_validator_finds_problems():
    good = {"emotion": "calm", "behaviours": ["resting"], "confidence": 0.5,
            "evidence": {m: {"present": False, "nearest": None, "score": None} for m in MODALITIES}}  # fmt: skip
    assert validate_report(good, MODALITIES) == []
    assert validate_report({**good, "emotion": "angry"}, MODALITIES)
    assert validate_report({**good, "behaviours": []}, MODALITIES)
    assert validate_report({**good, "confidence": 2}, MODALITIES)
    assert validate_report({**good, "evidence": {}}, MODALITIES)
    assert validate_report([], MODALITIES)


def test_report_training_moves_the_projector_only(model, llm):
    pieces = Pieces.build(llm.tokenizer)
    objective = ReportObjective(
        llm, pieces, {"a": ("calm", ("resting",)), "b": ("alert", ("moving",))}
    )
    batch = {"ids": ["a", "b"], "present": {m: torch.tensor([True, False]) for m in MODALITIES}}
    z = model.embed({m: torch.randn(2, d) for m, d in model.config.inputs})
    model.zero_grad()
    loss = objective(model, z, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is None for p in llm.parameters())
    assert model.projector.missing["image"].grad.abs().sum() > 0  # row b has no image
    assert any(p.grad is not None for p in model.projector.proj.parameters())


def test_end_to_end_stage_trains_heads_and_projector_together(model, llm):
    """The fourth stage of the schedule: alignment and report losses summed, heads and projector
    learning at once, the LLM frozen; both losses fall."""
    model, rng = copy.deepcopy(model), np.random.default_rng(0)  # the fixture stays untrained
    labels = np.arange(12) % 2
    vectors = {m: rng.normal(size=(2, d))[labels] + 0.1 * rng.normal(size=(12, d))
               for m, d in model.config.inputs}  # fmt: skip
    feats = Features([f"r{i}" for i in range(12)],
                     {m: v.astype(np.float32) for m, v in vectors.items()},
                     {m: np.ones(12, bool) for m in vectors})  # fmt: skip
    targets = {f"r{i}": (("calm", ("resting",)), ("alert", ("moving", "watching")))[c]
               for i, c in enumerate(labels)}  # fmt: skip
    objective = Objective(LossConfig(), ReportObjective(llm, Pieces.build(llm.tokenizer), targets))
    e2e = Stage("end-to-end", epochs=4, lr=3e-3, pairs=(("image", "text"), ("audio", "text")),
                train=("image", "audio", "text", "projector"), report_weight=1.0)  # fmt: skip
    trainer = Trainer(model, objective, feats, batch_size=6, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    llm_before = {k: v.clone() for k, v in llm.state_dict().items()}
    (state,) = trainer.fit([e2e])
    losses = [h["train_loss"] for h in state.history]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed >= {"heads", "projector"}
    assert all(torch.equal(v, llm.state_dict()[k]) for k, v in llm_before.items())


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_modality_dropout_trains_the_missing_tokens_on_complete_data(model, llm, dropout):
    """Every record has every modality: without dropout <MISSING> is never used (only AdamW's
    weight decay touches it); with it each <MISSING> embedding learns, as a missing input needs."""
    model = copy.deepcopy(model)
    feats = Features(["a", "b", "c", "d"],
                     {m: np.random.default_rng(1).normal(size=(4, d)).astype(np.float32)
                      for m, d in model.config.inputs},
                     {m: np.ones(4, bool) for m, _ in model.config.inputs})  # fmt: skip
    targets = {"a": ("calm", ("resting",)), "b": ("alert", ("moving",)),
               "c": ("calm", ("eating",)), "d": ("alert", ("watching",))}  # fmt: skip
    objective = Objective(LossConfig(), ReportObjective(llm, Pieces.build(llm.tokenizer), targets))
    stage = Stage("report", epochs=3, train=("projector",), align_weight=0.0, report_weight=1.0,
                  modality_dropout=dropout)  # fmt: skip
    before = {m: t.detach().clone() for m, t in model.projector.missing.items()}
    Trainer(model, objective, feats, batch_size=4, seed=0).fit([stage])
    moved = {m for m, t in model.projector.missing.items()
             if (t - before[m]).abs().max() > 1e-4 * before[m].abs().max()}  # fmt: skip
    assert moved == (set(before) if dropout else set())
