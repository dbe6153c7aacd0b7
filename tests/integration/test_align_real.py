"""The aligned space on real encoders (MiniLM, MobileNetV2, Whisper base) and real data, and
SmolLM2 reports from every modality subset."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_compression.align import AlignModel, Stage, Trainer, build_features, read_records
from llm_compression.align.config import LossConfig
from llm_compression.align.dataset import split
from llm_compression.align.evaluate import pair_recalls
from llm_compression.align.heads import AlignModelConfig
from llm_compression.align.report import Pieces, validate_report, write_report
from llm_compression.align.run import _label_ids
from llm_compression.align.trainer import Objective

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODALITIES = ("image", "audio", "text")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_minilm_parquet, real_mobilenet_v2_parquet,
            real_whisper_base_parquet):  # fmt: skip
    pytest.importorskip("skimage")
    out = tmp_path_factory.mktemp("align_real")
    script = ROOT / "scripts" / "build_align_dataset.py"
    subprocess.run([sys.executable, str(script), str(out), "--per-subject", "6"], check=True)
    records = read_records(out / "records.jsonl")
    models = {"image": real_mobilenet_v2_parquet, "audio": real_whisper_base_parquet,
              "text": real_minilm_parquet}  # fmt: skip
    feats = build_features(records, models, out / "cache", workers=2)
    train_r, held_r = split(records, 1 / 3, seed=0)
    row = {rid: i for i, rid in enumerate(feats.ids)}
    labels = tuple(sorted({r.label for r in records}))
    cfg = AlignModelConfig(inputs=tuple((m, feats.vectors[m].shape[1]) for m in MODALITIES),
                           labels=labels)  # fmt: skip
    torch.manual_seed(0)
    model = AlignModel(cfg)
    pairs = (("text", "image"), ("audio", "text"), ("image", "audio"))
    trainer = Trainer(model, Objective(LossConfig()), feats.subset([row[r.id] for r in train_r]),
                      labels=_label_ids(train_r, labels), batch_size=16)  # fmt: skip
    trainer.fit([Stage("cross", epochs=40, pairs=pairs, train=MODALITIES)])
    held = feats.subset([row[r.id] for r in held_r])
    return model, pair_recalls(model, held, _label_ids(held_r, labels))


def test_held_out_retrieval_beats_chance(trained):
    _, rows = trained
    for r in rows:
        assert r["recall@5"] >= r["chance@5"], r
    text_image = [r for r in rows if {r["query"], r["gallery"]} == {"text", "image"}]
    assert all(r["recall@1"] > 2 * r["chance@1"] for r in text_image), text_image


def test_smollm2_reports_validate_for_every_subset(trained, real_smollm2_parquet):
    from llm_compression.loader import load_model

    model, _ = trained
    llm = load_model(real_smollm2_parquet)
    pieces = Pieces.build(llm.tokenizer)
    for k in (1, 2, 3):
        for subset in itertools.combinations(MODALITIES, k):
            inputs = {m: torch.nn.functional.normalize(torch.randn(1, d), dim=-1)
                      for m, d in model.config.inputs if m in subset}  # fmt: skip
            report = write_report(model, llm, pieces, model.embed(inputs))
            assert validate_report(report, MODALITIES) == [], (subset, report)
