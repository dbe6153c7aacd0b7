"""Datasets, the feature cache (worker processes, Parquet) and retrieval figures."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from llm_compression.align import Features, build_features, read_records
from llm_compression.align import features as features_mod
from llm_compression.align.dataset import split
from llm_compression.align.evaluate import chance_at_k, drop_modalities, recall_at_k
from llm_compression.errors import InputError, ModelFileNotFoundError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_records_resolve_paths_and_allow_missing_modalities(tmp_path):
    path = _write(tmp_path / "r.jsonl", [
        {"id": "a", "image": "img/a.png", "text": "a cat", "label": "cat",
         "emotion": "calm", "behaviours": ["resting"]},
        {"id": "b", "audio": "b.wav", "image": None, "label": "dog"},
    ])  # fmt: skip
    a, b = read_records(path)
    assert a.inputs == {"image": str(tmp_path / "img/a.png"), "text": "a cat"}
    assert b.inputs == {"audio": str(tmp_path / "b.wav")} and not b.has("image")
    assert a.behaviours == ("resting",)


@pytest.mark.parametrize(
    "rows, match",
    [([{"id": "a"}, {"id": "a"}], "repeats"), ([{"text": "x"}], "non-empty string `id`"),
     ([{"id": "a", "text": ""}], "non-empty string"), ([{"id": "a", "behaviours": "x"}], "list")],
)  # fmt: skip
def test_bad_records_are_typed_errors(tmp_path, rows, match):
    with pytest.raises(InputError, match=match):
        read_records(_write(tmp_path / "r.jsonl", rows))


def test_missing_dataset(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="build_align_dataset"):
        read_records(tmp_path / "none.jsonl")


def test_split_holds_out_a_share_of_each_label(tmp_path):
    rows = [{"id": f"{c}{i}", "text": "t", "label": c} for c in "ab" for i in range(8)]
    train, held = split(read_records(_write(tmp_path / "r.jsonl", rows)), 0.25, seed=0)
    assert sorted(r.label for r in held) == ["a", "a", "b", "b"] and len(train) == 12


def test_feature_cache_in_worker_processes_then_read_back(tmp_path, files, monkeypatch):
    rows = [{"id": f"r{i}", "text": f"sentence number {i}"} for i in range(5)]
    rows.append({"id": "r5", "image": "x.png"})  # no text: missing for the text model
    records = read_records(_write(tmp_path / "r.jsonl", rows))
    feats = build_features(records, {"text": files["bert"]}, tmp_path / "cache", workers=2)
    assert feats.present["text"].tolist() == [True] * 5 + [False]
    assert not feats.vectors["text"][5].any()
    np.testing.assert_allclose(np.linalg.norm(feats.vectors["text"][:5], axis=1), 1, rtol=1e-5)
    (cached,) = (tmp_path / "cache").glob("text-*.parquet")
    table = pq.read_table(cached)
    assert table.column_names == ["id", "modality", "model", "vector"]
    assert str(table.schema.field("vector").type).startswith("fixed_size_list<element: float>")
    assert pq.ParquetFile(cached).metadata.row_group(0).column(3).compression == "ZSTD"

    def no_compute(*args, **kwargs):
        raise AssertionError("everything should come from the cache")

    monkeypatch.setattr(features_mod, "_compute", no_compute)
    again = build_features(records, {"text": files["bert"]}, tmp_path / "cache", workers=2)
    np.testing.assert_array_equal(again.vectors["text"], feats.vectors["text"])


def test_video_records_are_featurised_with_the_image_model(tmp_path, files):
    from provider_helpers import make_video, solid_frames

    from llm_compression.provider import MultimodalEmbeddingProvider

    make_video(tmp_path / "v.mp4", solid_frames(6))
    rows = [{"id": "v", "video": "v.mp4", "text": "gray frames"}, {"id": "t", "text": "only text"}]
    records = read_records(_write(tmp_path / "r.jsonl", rows))
    feats = build_features(records, {"video": files["clip"]}, tmp_path / "cache", workers=1)
    assert feats.present["video"].tolist() == [True, False]
    direct = MultimodalEmbeddingProvider(image_model=files["clip"]).encode_video(tmp_path / "v.mp4")
    np.testing.assert_allclose(feats.vectors["video"][0], direct, rtol=1e-5, atol=1e-6)
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.parquet")] == ["video"]


def test_recall_and_chance():
    q = np.eye(3, dtype=np.float32)
    g = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)
    labels_q, labels_g = np.array([0, 1, 2]), np.array([0, 2, 1, 1])
    assert recall_at_k(q, g, labels_q, labels_g, 1) == 1.0
    assert recall_at_k(q, g, labels_q, np.array([1, 0, 2, 2]), 1) == 0.0
    # one label-0 item among 4: chance@1 = 1/4; label 1 has two: 1 - C(2,1)/C(4,1) = 1/2
    assert chance_at_k([0, 1], labels_g, 1) == pytest.approx((0.25 + 0.5) / 2)


def test_drop_modalities_keeps_one_per_record():
    n = 200
    feats = Features([str(i) for i in range(n)],
                     {m: np.ones((n, 2), np.float32) for m in "ab"},
                     {m: np.ones(n, bool) for m in "ab"})  # fmt: skip
    out = drop_modalities(feats, 0.9, seed=0)
    both = out.present["a"] | out.present["b"]
    assert both.all() and out.present["a"].mean() < 0.7
    assert not out.vectors["a"][~out.present["a"]].any()
