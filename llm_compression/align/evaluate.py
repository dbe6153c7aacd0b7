"""Cross-modal retrieval on held-out records: recall@k against its exact chance level.

A query (one modality of a record) hits at k when one of its k nearest gallery vectors (the other
modality, every held-out record that has it) carries the query's label. Chance is the probability
that k gallery items drawn at random include one of the query's label:
``1 - C(N - P, k) / C(N, k)`` for a gallery of N with P of that label, averaged over queries.
"""

from __future__ import annotations

from math import comb

import numpy as np
import torch

from .features import Features


def recall_at_k(queries, gallery, q_labels, g_labels, k: int) -> float:
    """Fraction of queries (Q, D) with a same-label item among their k best of gallery (G, D)."""
    scores = np.asarray(queries) @ np.asarray(gallery).T  # (Q, G)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = (np.asarray(g_labels)[top] == np.asarray(q_labels)[:, None]).any(axis=1)
    return float(hits.mean())


def chance_at_k(q_labels, g_labels, k: int) -> float:
    g_labels = np.asarray(g_labels)
    n = len(g_labels)
    values = [1 - comb(n - int((g_labels == q).sum()), k) / comb(n, k) for q in q_labels]
    return float(np.mean(values))


@torch.no_grad()
def pair_recalls(model, feats: Features, labels: np.ndarray, ks=(1, 5)) -> list[dict]:
    """One row per ordered modality pair (query -> gallery): recall@k and chance@k."""
    model.eval()
    z = {m: v.numpy() for m, v in model.embed(
        {m: torch.from_numpy(x) for m, x in feats.vectors.items()}).items()}  # fmt: skip
    rows = []
    for qm in z:
        for gm in z:
            if qm == gm:
                continue
            q, g = feats.present[qm], feats.present[gm]
            row = {"query": qm, "gallery": gm, "n_query": int(q.sum()), "n_gallery": int(g.sum())}
            for k in ks:
                row[f"recall@{k}"] = recall_at_k(z[qm][q], z[gm][g], labels[q], labels[g], k)
                row[f"chance@{k}"] = chance_at_k(labels[q], labels[g], k)
            rows.append(row)
    return rows


def drop_modalities(feats: Features, fraction: float, seed: int = 0) -> Features:
    """A copy where each (record, modality) is missing with probability ``fraction``; a record
    keeps at least one modality."""
    rng = np.random.default_rng(seed)
    names = list(feats.present)
    present = {m: feats.present[m].copy() for m in names}
    for i in range(len(feats.ids)):
        have = [m for m in names if present[m][i]]
        drop = [m for m in have if rng.random() < fraction]
        if drop and len(drop) == len(have):
            drop.pop(int(rng.integers(len(drop))))  # keep one modality, chosen at random
        for m in drop:
            present[m][i] = False
    vectors = {m: np.where(present[m][:, None], v, 0.0).astype(np.float32)
               for m, v in feats.vectors.items()}  # fmt: skip
    return Features(list(feats.ids), vectors, present)
