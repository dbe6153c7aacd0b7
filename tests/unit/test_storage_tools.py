"""Storage: damaged files, verify/repair, the CLI, the documented queries, no torch, model checks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_compression.cli import main
from llm_compression.errors import StoreCorruptError
from llm_compression.storage import MultimodalStorage, repair, verify

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage.md"


def make_store(path, n=30, dim=8) -> MultimodalStorage:
    store = MultimodalStorage(path)
    v = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    half = n // 2
    store.add([f"r{i}" for i in range(half)], v[:half], modality="text", model="m")
    store.add([f"r{i}" for i in range(half, n)], v[half:], modality="text", model="m")
    return store


def fragments(path) -> list[Path]:
    return sorted((Path(path) / "data" / "text").glob("*.parquet"))


def test_corrupt_fragment_is_reported_and_can_be_dropped(tmp_path):
    make_store(tmp_path)
    damaged = fragments(tmp_path)[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only checksums can tell
    damaged.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match=damaged.name) as info:
        MultimodalStorage(tmp_path)
    assert "storage repair" in str(info.value) or "verify" in str(info.value)
    report = verify(tmp_path)
    assert not report.ok and damaged.name in report.problems[0]
    assert main(["storage", "verify", str(tmp_path)]) == 1
    result = repair(tmp_path, drop_corrupt=True)
    assert result.dropped_fragments == (f"data/text/{damaged.name}",)
    assert MultimodalStorage(tmp_path).count() == 15 and verify(tmp_path).ok


def test_truncated_fragment_and_damaged_manifest(tmp_path):
    make_store(tmp_path)
    frag = fragments(tmp_path)[1]  # added by version 2
    frag.write_bytes(frag.read_bytes()[:-100])
    with pytest.raises(StoreCorruptError, match="size"):
        MultimodalStorage(tmp_path)
    latest = max((tmp_path / "manifests").glob("*.json"))
    latest.write_text("{not json")
    with pytest.raises(StoreCorruptError, match="repair"):
        MultimodalStorage(tmp_path)
    assert not verify(tmp_path).ok
    report = repair(tmp_path)
    assert report.manifests_set_aside == (f"manifests/{latest.name}",)
    assert report.version == 1  # the previous version is live again; its fragment is intact
    assert f"data/text/{frag.name}" in report.removed  # no live version names it any more
    assert MultimodalStorage(tmp_path).count() == 15 and verify(tmp_path).ok


def test_repair_removes_leftovers_only(tmp_path):
    make_store(tmp_path)
    (tmp_path / "tmp" / "x.parquet.tmp").write_bytes(b"half")
    stray = tmp_path / "data" / "text" / "99999999-stray.parquet"
    stray.write_bytes(b"orphan")
    report = verify(tmp_path)
    assert report.ok and report.orphans == ("data/text/99999999-stray.parquet",)
    assert report.temp_files == ("tmp/x.parquet.tmp",)
    assert main(["storage", "repair", str(tmp_path)]) == 0
    assert not stray.exists() and len(fragments(tmp_path)) == 2
    assert MultimodalStorage(tmp_path).count() == 30


def test_cli_stats_compact_and_errors(tmp_path, capsys):
    make_store(tmp_path)
    assert main(["storage", "stats", str(tmp_path)]) == 0
    assert '"fragments": 2' in capsys.readouterr().out
    assert main(["storage", "compact", str(tmp_path)]) == 0
    assert '"fragments_removed": 2' in capsys.readouterr().out
    assert main(["storage", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    assert main(["storage", "stats", str(tmp_path / "nothing")]) == 2
    assert "not an embedding store" in capsys.readouterr().err


def test_storage_never_imports_torch():
    code = "import llm_compression.storage, sys; assert 'torch' not in sys.modules, 'torch'"
    code += "; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_documented_pyarrow_and_duckdb_queries_run(tmp_path):
    pytest.importorskip("duckdb")
    store = MultimodalStorage(tmp_path)
    v = np.random.default_rng(0).standard_normal((20, 384)).astype(np.float32)
    store.add([f"d{i}" for i in range(20)], v, modality="text", model="all-minilm-l6-v2",
              sources=[f"doc{i}.txt" for i in range(20)],
              metadata=[{"lang": "en" if i % 2 else "de"} for i in range(20)])  # fmt: skip
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    queries = [b for b in blocks if "pyarrow.dataset" in b or "duckdb" in b]
    assert len(queries) == 2
    scope = {"STORE": str(tmp_path), "query_vector": v[3]}
    for block in queries:
        exec(block, scope)  # noqa: S102 - the documented snippets, run as written
    assert scope["table"].column("id").to_pylist() == ["d3"]
    top = scope["top"]
    assert top[0][:3] == ("d3", "doc3.txt", "en") and top[0][3] == pytest.approx(1.0, abs=1e-5)
    assert [row[0] for row in top] == list(store.search(v[3], k=3).ids)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "upsert", "delete", "compact"]),
        st.lists(st.integers(0, 11), min_size=1, max_size=4, unique=True),
    ),  # fmt: skip
    min_size=1,
    max_size=12,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_operations_match_a_dict_model(ops):
    model: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = MultimodalStorage(tmp)
        for step, (op, keys) in enumerate(ops):
            names = [f"k{k}" for k in keys]
            v = np.random.default_rng(step).standard_normal((len(names), 4)).astype(np.float32)
            if op == "add" and not set(names) & set(model):
                store.add(names, v, modality="image", model="m")
                model.update(zip(names, v, strict=True))
            elif op == "upsert":
                store.upsert(names, v, modality="image", model="m")
                model.update(zip(names, v, strict=True))
            elif op == "delete":
                assert store.delete(names, missing_ok=True) == len(set(names) & set(model))
                for name in names:
                    model.pop(name, None)
            elif op == "compact":
                store.compact()
        for check in (store, MultimodalStorage(tmp)):
            assert check.count() == len(model)
            if model:
                got = check.get(sorted(model), modality="image")
                expected = np.stack([model[k] for k in sorted(model)])
                np.testing.assert_array_equal(np.array(got.column("vector").to_pylist()), expected)
                for key, vector in model.items():
                    assert check.search(vector, k=1).ids == (key,)


def test_vector_column_is_stored_plain_and_the_rest_zstd(tmp_path):
    make_store(tmp_path)
    meta = pq.ParquetFile(fragments(tmp_path)[0]).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(7)}
    assert codecs.pop("vector.list.element") == "UNCOMPRESSED"
    assert set(codecs.values()) == {"ZSTD"} and len(codecs) == 6
    manifest = json.loads(max((tmp_path / "manifests").glob("*.json")).read_text())
    frag = manifest["tables"]["text"]["fragments"][0]
    data = (tmp_path / frag["file"]).read_bytes()
    assert manifest["format_version"] == 2 and frag["checksum"] == f"crc32:{zlib.crc32(data):08x}"


def test_format_1_manifests_with_sha256_are_read_and_verified(tmp_path):
    make_store(tmp_path)
    latest = max((tmp_path / "manifests").glob("*.json"))
    body = json.loads(latest.read_text())
    body["format_version"] = 1
    for frag in body["tables"]["text"]["fragments"]:
        del frag["checksum"]
        frag["sha256"] = hashlib.sha256((tmp_path / frag["file"]).read_bytes()).hexdigest()
    latest.write_text(json.dumps(body))
    store = MultimodalStorage(tmp_path)
    assert store.count() == 30 and verify(tmp_path).ok
    store.add(["new"], np.ones((1, 8), np.float32), modality="text", model="m")  # writes format 2
    body = json.loads(max((tmp_path / "manifests").glob("*.json")).read_text())
    algorithms = [f["checksum"].split(":")[0] for f in body["tables"]["text"]["fragments"]]
    assert body["format_version"] == 2 and algorithms == ["sha256", "sha256", "crc32"]
    assert verify(tmp_path).ok
    old = fragments(tmp_path)[0]
    data = bytearray(old.read_bytes())
    data[10] ^= 0xFF  # in the first column chunk: the footer still parses, only the bytes differ
    old.write_bytes(bytes(data))
    report = verify(tmp_path)
    assert len(report.problems) == 1 and "sha256 checksum differs" in report.problems[0]
