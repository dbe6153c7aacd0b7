"""Held-out accuracy of the reports of a trained checkpoint, per input subset (docs/alignment.md).

    python scripts/align_report_eval.py CONFIG.toml [--checkpoint RUNS/align.parquet] [--subsets all,image]

For each held-out record (the config's split) and each input subset (image, audio, text, all
three), writes the report from the cached features and compares it with the record's labels:
emotion accuracy, behaviour Jaccard, and the share of reports that validate. The baseline is the
accuracy of always answering the most frequent training emotion.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import torch

from llm_compression.align import load_checkpoint, load_config, validate_report
from llm_compression.align.dataset import read_records, split
from llm_compression.align.features import build_features
from llm_compression.align.report import Pieces, write_report
from llm_compression.loader import load_model

SUBSETS = {"image": ("image",), "audio": ("audio",), "text": ("text",),
           "all": ("image", "audio", "text")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="default: <out>/align.parquet")
    parser.add_argument("--subsets", default="all,image,audio,text", help="comma-separated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config)
    model = load_checkpoint(args.checkpoint or cfg.out / "align.parquet").eval()
    llm = load_model(cfg.models["llm"])
    pieces = Pieces.build(llm.tokenizer, model.config.emotions, model.config.behaviours)
    records = read_records(cfg.dataset)
    train_r, held_r = split(records, cfg.holdout, cfg.seed)
    feats = build_features(held_r, {m: cfg.models[m] for m in cfg.modalities}, cfg.cache)
    majority = Counter(r.emotion for r in train_r).most_common(1)[0]
    base = sum(r.emotion == majority[0] for r in held_r) / len(held_r)
    print(
        f"{len(held_r)} held-out records; majority emotion {majority[0]!r}: accuracy {base:.3f}",
        flush=True,
    )
    print(f"{'inputs':<20}{'emotion acc':>12}{'behav. Jaccard':>16}{'valid':>8}")
    for subset in (SUBSETS[name] for name in args.subsets.split(",")):
        hits, jaccard, valid = 0, 0.0, 0
        for i, r in enumerate(held_r):
            x = {m: torch.from_numpy(feats.vectors[m][i : i + 1]) for m in subset}
            with torch.no_grad():
                report = write_report(model, llm, pieces, model.embed(x))
            valid += not validate_report(report, model.config.modalities, pieces.emotions,
                                         pieces.behaviours)  # fmt: skip
            hits += report["emotion"] == r.emotion
            got, want = set(report["behaviours"]), set(r.behaviours)
            jaccard += len(got & want) / len(got | want)
        n = len(held_r)
        print(
            f"{'+'.join(subset):<20}{hits / n:>12.3f}{jaccard / n:>16.3f}{valid / n:>8.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
