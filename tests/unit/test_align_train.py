"""Alignment training: config, checkpoints, the loop, missing modalities, frozen encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_compression.align import (
    AlignModel,
    AlignModelConfig,
    Features,
    LossConfig,
    Stage,
    Trainer,
    load_checkpoint,
    load_config,
    save_checkpoint,
)  # fmt: skip
from llm_compression.align.trainer import EarlyStopping, MetricsLog, Objective
from llm_compression.errors import ConfigError, FormatError, ModelFileNotFoundError

DIMS = {"image": 12, "audio": 10, "text": 8}
CFG = AlignModelConfig(inputs=tuple(DIMS.items()), dim=16, hidden=24, prompt_tokens=2, llm_dim=32)


def toy_features(n=48, classes=4, seed=0, drop=0.3) -> tuple[Features, np.ndarray]:
    """Class-structured random features; each modality missing for ~``drop`` of the rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    vectors, present = {}, {}
    for m, d in DIMS.items():
        centres = rng.normal(size=(classes, d))
        x = centres[labels] + 0.3 * rng.normal(size=(n, d))
        keep = rng.random(n) > drop
        vectors[m] = np.where(keep[:, None], x, 0.0).astype(np.float32)
        present[m] = keep
    return Features([f"r{i}" for i in range(n)], vectors, present), labels


PAIRS = (("image", "text"), ("audio", "text"), ("image", "audio"))


def _trainer(loss=None, callbacks=(), seed=0):
    feats, labels = toy_features(seed=seed)
    held, held_labels = toy_features(n=16, seed=seed + 1)
    model = AlignModel(CFG)
    return Trainer(model, Objective(loss or LossConfig()), feats, held, labels=labels, held_labels=held_labels,
                   batch_size=16, seed=seed, callbacks=callbacks)  # fmt: skip


@pytest.mark.parametrize(
    "loss",
    [LossConfig(), LossConfig(learnable_temperature=True), LossConfig(decoupled=True),
     LossConfig(hard_negative_beta=1.0), LossConfig(queue_size=8), LossConfig(supervised=True),
     LossConfig(name="vicreg"), LossConfig(name="barlow_twins")],
)  # fmt: skip
def test_batches_with_missing_modalities_train_without_nan(loss):
    trainer = _trainer(loss)
    train = ("image", "audio", "text", "temperature")
    (state,) = trainer.fit([Stage("all", epochs=4, pairs=PAIRS, train=train)])
    losses = [h["train_loss"] for h in state.history]
    assert all(np.isfinite(losses)) and np.isfinite(state.val_loss)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    if loss.name == "info_nce":
        assert losses[-1] < losses[0]


def test_stages_train_only_their_parts():
    trainer = _trainer()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit([Stage("warmup", epochs=2, pairs=(("image", "text"),), train=("image", "text"))])
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("heads.image", "heads.text")) for k in changed)


def test_callbacks_log_metrics_and_stop_early(tmp_path):
    class Worse(EarlyStopping):  # pretend the held-out loss never improves after epoch 1
        def on_epoch_end(self, trainer, state):
            state.improved = state.epoch == 1
            super().on_epoch_end(trainer, state)

    log = tmp_path / "m.jsonl"
    trainer = _trainer(callbacks=[MetricsLog(log), Worse()])
    (state,) = trainer.fit([Stage("s", epochs=10, pairs=PAIRS, train=("image",), patience=2)])
    assert state.epoch == 3 and state.stop
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["stage"] == "s"


def test_no_gradient_reaches_the_frozen_encoder(files):
    """Features come from the provider as numpy: the encoder is outside the graph entirely."""
    from llm_compression.loader import load_model
    from llm_compression.provider import MultimodalEmbeddingProvider

    provider = MultimodalEmbeddingProvider(text_model=files["bert"])
    encoder = provider._slot("text").get()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    texts = ["a cat", "a dog", "a rocket", "coffee"]
    x = torch.from_numpy(provider.encode_batch(texts))
    cfg = AlignModelConfig(inputs=(("text", x.shape[1]), ("image", x.shape[1])), dim=8, hidden=8)
    model = AlignModel(cfg)
    z = model.embed({"text": x, "image": x.flip(0)})
    from llm_compression.align import info_nce

    info_nce(z["text"], z["image"]).backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert model.heads["text"].fc1.weight.grad is not None
    assert isinstance(load_model(files["bert"]), type(encoder))


def test_checkpoint_round_trip(tmp_path):
    model = AlignModel(CFG)
    path = save_checkpoint(tmp_path / "a.parquet", model)
    back = load_checkpoint(path)
    assert back.config == CFG
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_checkpoint_errors(tmp_path, files):
    with pytest.raises(ModelFileNotFoundError, match="align train"):
        load_checkpoint(tmp_path / "none.parquet")
    with pytest.raises(FormatError, match="expected an alignment checkpoint"):
        load_checkpoint(files["bert"])


TOML = """
dataset = "records.jsonl"
cache = "cache"
out = "runs"
batch_size = 8
[models]
text = "t.parquet"
image = "i.parquet"
[loss]
name = "info_nce"
decoupled = true
[[stages]]
name = "warmup"
epochs = 3
pairs = [["text", "image"]]
train = ["text", "image"]
[[stages]]
name = "cross"
epochs = 2
lr = 5e-4
pairs = [["text", "image"]]
train = ["text", "image", "temperature"]
"""


def test_config_from_toml(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    cfg = load_config(tmp_path / "c.toml")
    assert (
        cfg.dataset == tmp_path / "records.jsonl" and cfg.models["text"] == tmp_path / "t.parquet"
    )
    assert [s.name for s in cfg.stages] == ["warmup", "cross"] and cfg.loss.decoupled
    assert cfg.stages[0].pairs == (("text", "image"),) and cfg.modalities == ("image", "text")


@pytest.mark.parametrize(
    "edit, match",
    [(("decoupled = true", "decoupled = true\nbogus = 1"), "unknown keys"),
     (('train = ["text", "image"]\n[[stages]]', 'train = ["wings"]\n[[stages]]'), "must name parts"),
     (("epochs = 3", "epochs = 0"), "epochs must be"),
     (("epochs = 3", "epochs = 3\nmodality_dropout = 1.0"), "modality_dropout must be"),
     (('image = "i.parquet"', 'image = "i.parquet"\nvideo = "v.parquet"'), "same file for both"),
     (('name = "info_nce"', 'name = "triplet"'), "not supported"),
     (("[models]", "report = 1\n[models]"), "unknown keys"),
     (("batch_size = 8", "batch_size = ["), "not valid TOML"),
     (('pairs = [["text", "image"]]\ntrain', 'pairs = [["text", "audio"]]\ntrain'), "no encoder")],
)  # fmt: skip
def test_config_errors(tmp_path, edit, match):
    (tmp_path / "c.toml").write_text(TOML.replace(*edit))
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "c.toml")


def test_resuming_from_a_checkpoint_of_other_shapes_or_labels_is_refused(tmp_path):
    from dataclasses import replace

    from llm_compression.align.run import _initial_model

    (tmp_path / "c.toml").write_text(TOML)
    cfg = load_config(tmp_path / "c.toml")
    trained = AlignModel(CFG)
    assert _initial_model(cfg, CFG, "a.parquet", trained) is trained
    for other in (replace(CFG, dim=8), replace(CFG, labels=("cat", "dog"))):
        with pytest.raises(ConfigError, match="start from a checkpoint trained with this config"):
            _initial_model(cfg, other, "a.parquet", trained)
