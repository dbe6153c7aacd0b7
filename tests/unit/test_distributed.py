"""llm_compression.distributed on a local Ray (2 CPUs): each input stored once, with the vectors
of the single-machine path, in one commit per table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from provider_helpers import tiny_model_file

from llm_compression.tables import MultimodalStorage

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_model_file("bert", tmp_path_factory.getbasetemp() / "provider_models")


def corpus(root: Path) -> list[Path]:
    root.mkdir()
    paths = []
    for i in range(5):
        paths.append(root / f"doc{i}.txt")
        paths[-1].write_text(f"document number {i} about cats and rockets")
    paths.append(root / "lines.jsonl")
    paths[-1].write_text("\n".join(json.dumps({"text": t}) for t in ("first line", "second")))
    paths.append(root / "junk.bin")
    paths[-1].write_bytes(bytes(range(256)))
    return paths


def vectors_by_id(path: Path) -> dict[str, np.ndarray]:
    table = MultimodalStorage(path).table("text").to_pyarrow_table(columns=["id", "vector"])
    return {i: np.asarray(v) for i, v in zip(table["id"].to_pylist(), table["vector"].to_pylist(),
                                               strict=True)}  # fmt: skip


def test_ray_stores_each_input_once_with_the_single_machine_vectors(local_ray, bert, tmp_path):
    from llm_compression.distributed import embed_files

    paths = corpus(tmp_path / "in")
    report = embed_files(paths, tmp_path / "ray", text_model=bert, actors=2, batch_size=2)
    assert set(report.failed) == {str(paths[-1])} and len(report.stored) == 6
    assert report.files["text"] >= 2  # several workers' files ...
    assert MultimodalStorage(tmp_path / "ray").table("text").version() == 1  # ... one commit
    single = MultimodalStorage(tmp_path / "one", text_model=bert)
    single.add_files(paths)
    got, want = vectors_by_id(tmp_path / "ray"), vectors_by_id(tmp_path / "one")
    assert sorted(got) == sorted(want) and len(got) == 7
    for key, vector in want.items():
        np.testing.assert_allclose(got[key], vector, atol=1e-6)
    assert set(MultimodalStorage(tmp_path / "ray").failures()) == {str(paths[-1])}

    again = embed_files(paths, tmp_path / "ray", text_model=bert, actors=2, batch_size=2)
    assert len(again.skipped) == 6 and not again.stored  # stored inputs are not redone
    assert len(vectors_by_id(tmp_path / "ray")) == 7
