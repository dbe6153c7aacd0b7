"""Held-out cross-modal retrieval recall@1 / @5 against chance, for each modality pair, trained
with all modalities and with a fraction of them missing (docs/alignment.md).

    python scripts/align_recall.py CONFIG.toml [--drop 0.3] [--json OUT.json]

Uses the config's dataset, models, feature cache, split and alignment stages (stages with
report_weight > 0 are skipped). A hit is a same-label item among the k nearest.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from llm_compression.align import AlignModel, Trainer, load_config
from llm_compression.align.evaluate import drop_modalities, pair_recalls
from llm_compression.align.run import _label_ids, _model_config, prepare
from llm_compression.align.trainer import Objective


def run(cfg, drop: float) -> dict[str, list[dict]]:
    _, (train_r, held_r), feats, (train_f, held_f), labels = prepare(cfg)
    train_l, held_l = _label_ids(train_r, labels), _label_ids(held_r, labels)
    stages = [s for s in cfg.stages if not s.reports]
    out = {}
    for name, data in (
        ("complete", train_f),
        (f"missing {drop:.0%}", drop_modalities(train_f, drop, cfg.seed)),
    ):
        torch.manual_seed(cfg.seed)  # the same initial heads for both runs
        model = AlignModel(_model_config(cfg, feats, labels))
        model.temperature.log_t.data.fill_(float(np.log(cfg.loss.temperature)))
        trainer = Trainer(model, Objective(cfg.loss), data, None, labels=train_l,
                          batch_size=cfg.batch_size, seed=cfg.seed)  # fmt: skip
        trainer.fit(stages)
        out[name] = pair_recalls(model, held_f, held_l)
        present = {m: int(v.sum()) for m, v in data.present.items()}
        print(f"\ntrained on {name} ({len(data.ids)} records; present per modality {present}),"
              f" held out {len(held_f.ids)}:")  # fmt: skip
        print(f"{'query -> gallery':<18}{'R@1':>7}{'chance':>8}{'R@5':>7}{'chance':>8}")
        for r in out[name]:
            print(f"{r['query'] + ' -> ' + r['gallery']:<18}{r['recall@1']:>7.3f}"
                  f"{r['chance@1']:>8.3f}{r['recall@5']:>7.3f}{r['chance@5']:>8.3f}")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--drop", type=float, default=0.3, help="fraction of modalities dropped")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = run(load_config(args.config), args.drop)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
