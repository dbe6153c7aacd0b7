"""backend="onnxruntime": tiny random models on ONNX Runtime against our torch path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from provider_helpers import photo, tiny_bert_folder, tiny_model_file, tone

from llm_compression.convert import convert
from llm_compression.errors import ConfigError, UnsupportedFamilyError
from llm_compression.loader import load_model
from llm_compression.onnxrt import OrtModel, graphs
from llm_compression.provider import CLIPEngine, MultimodalEmbeddingProvider
from llm_compression.weightfile import read_metadata

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["a cat", "a dog sleeping on a red mat", "the quick brown fox jumps over it", ""]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Each test module exports into its own graph cache."""
    old = os.environ.get("LLM_COMPRESSION_CACHE")
    folder = tmp_path_factory.mktemp("cache")
    os.environ["LLM_COMPRESSION_CACHE"] = str(folder)
    yield folder
    if old is None:
        del os.environ["LLM_COMPRESSION_CACHE"]
    else:
        os.environ["LLM_COMPRESSION_CACHE"] = old


@pytest.fixture(scope="module")
def files(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("models")
    return {kind: tiny_model_file(kind, root) for kind in ("bert", "clip", "whisper")}


def _providers(files, dtype):
    paths = dict(text_model=files["bert"], clip_model=files["clip"], audio_model=files["whisper"])
    torch_side = MultimodalEmbeddingProvider(**paths)
    return torch_side, MultimodalEmbeddingProvider(**paths, backend="onnxruntime", dtype=dtype)


EMBEDS = {
    "text": lambda p: p.encode(TEXTS),
    "clip text": lambda p: p.clip_engine.encode_text(TEXTS[:3]),
    "image": lambda p: p.encode_image([photo("chelsea"), photo("coffee")]),
    "audio": lambda p: p.encode_audio([tone(2.0, 440), tone(31.0, 220)], sample_rate=16000),
}


def test_float32_matches_the_torch_path_for_every_modality(files):
    ours, ort = _providers(files, "float32")
    for name, embed in EMBEDS.items():
        np.testing.assert_allclose(embed(ort), embed(ours), atol=1e-5, err_msg=name)


def test_int8_stays_close_and_quantizes_every_linear_layer(files):
    ours, ort = _providers(files, "int8")
    for name, embed in EMBEDS.items():
        a, b = embed(ort), embed(ours)
        assert (a * b).sum(axis=1).min() > 0.99, name
        assert np.abs(a - b).max() > 1e-6, name  # int8, not float32 again
    info = json.loads(graphs.find_graphs(read_metadata(files["bert"]))[graphs.INFO])
    int8 = [n for n in info["parts"]["text"]["int8"] if n.endswith(graphs.INT8_WEIGHT)]
    assert len(int8) == 2 * 6  # q k v o up down in each of the 2 layers


def _op_counts(files, kind, modality, dtype):
    import collections

    import onnx

    graph = graphs.find_graphs(read_metadata(files[kind]))[graphs.graph_name(modality, dtype)]
    return collections.Counter(n.op_type for n in onnx.load_from_string(graph).graph.node)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_each_attention_is_one_multi_head_attention_node(files, dtype):
    """Padding mask (bert), causal (clip text) or none (vision, audio): one fused node per layer,
    no softmax or transposes of its own left in the graph."""
    for kind, modality in (("bert", "text"), ("clip", "text"), ("clip", "image"),
                           ("whisper", "audio")):  # fmt: skip
        ops = _op_counts(files, kind, modality, dtype)
        assert ops["MultiHeadAttention"] == 2 and ops["Softmax"] == 0, (kind, modality, ops)
        assert ops["Transpose"] <= 1, (
            kind,
            modality,
            ops,
        )  # CLIP's patches: (B, C, N) -> (B, N, C)


def test_an_int8_file_computes_from_its_own_rows(tmp_path):
    from llm_compression.onnxrt.session import _Rows
    from llm_compression.weightfile import WeightFile, decode_tensor

    folder = tiny_bert_folder(tmp_path / "hf")
    int8_file = convert(folder, tmp_path / "bert.int8.parquet", dtype="int8")
    name = "layers.0.mlp.up.weight"
    fed = _Rows(WeightFile(int8_file), 1).decode([name + graphs.INT8_WEIGHT])
    stored = decode_tensor(WeightFile(int8_file), name, dequantize=False)
    np.testing.assert_array_equal(fed[name + graphs.INT8_WEIGHT], stored.T)
    ids = np.array([[101, 2000, 3000, 102]])
    a = OrtModel(int8_file, dtype="int8").encode_text(ids)
    b = load_model(int8_file).encode_text(_torch(ids)).numpy()
    assert float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_onnxruntime_copies_the_initializers_so_ours_are_dropped(files, dtype):
    """The session keeps no pointer into the rows handed to it: OrtModel drops them once the
    session exists (zeroing them afterwards leaves every output as it was)."""
    import onnxruntime as ort

    from llm_compression.onnxrt.session import _Rows, _session
    from llm_compression.weightfile import WeightFile

    info = json.loads(graphs.find_graphs(read_metadata(files["bert"]))[graphs.INFO])
    part, fed = info["parts"]["text"], info["parts"]["text"]["fed"][dtype]
    rows = _Rows(WeightFile(files["bert"]), 1)
    held = {k: np.array(v) for k, v in rows.decode(part[dtype]).items() if k not in fed}
    graph = graphs.find_graphs(read_metadata(files["bert"]))[graphs.graph_name("text", dtype)]
    session = _session(ort, graph, held, 1)
    feeds = {**rows.decode(fed), "ids": np.array([[1, 5, 7, 2]]), "mask": np.ones((1, 4))}
    feeds["mask"] = feeds["mask"].astype(np.int64)
    before = session.run(None, feeds)[0]
    for array in held.values():
        array[...] = 0
    np.testing.assert_array_equal(session.run(None, feeds)[0], before)


def test_embedding_tables_are_run_inputs_read_where_they_lie(files):
    """ORT would copy an initializer; the token table (the largest tensor) is fed instead."""
    model = OrtModel(files["bert"])
    fed = model.info["parts"]["text"]["fed"]["float32"]
    assert "embed.token.weight" in fed
    inputs = {i.name for i in model._sessions["text"].get_inputs()}
    assert set(fed) <= inputs and set(fed) == set(model._fed["text"])


def test_an_int8_model_holds_its_tables_in_int8(tmp_path):
    """No float32 copy of an int8 file's embeddings after load: the fed tables are its int8 rows
    and a float32 scale per row, byte for byte what the file stores."""
    from llm_compression.weightfile import WeightFile

    int8_file = convert(
        tiny_bert_folder(tmp_path / "hf"), tmp_path / "b.int8.parquet", dtype="int8"
    )
    model = OrtModel(int8_file, dtype="int8")
    tables = WeightFile(int8_file).tensors
    held = model._fed["text"]
    stored = 0
    for name in [n.removesuffix(graphs.INT8_ROWS) for n in held if n.endswith(graphs.INT8_ROWS)]:
        assert held[name + graphs.INT8_ROWS].dtype == np.int8
        stored += tables[name].n_params + 4 * tables[name].shape[0]
    assert "embed.token.weight" + graphs.INT8_ROWS in held
    assert sum(a.nbytes for a in held.values()) == stored
    assert not any(name in held for name in tables)  # no dequantized (float32) table


def test_clip_engine_and_load_model_take_the_backend(files):
    engine = CLIPEngine(files["clip"], backend="onnxruntime")
    reference = CLIPEngine(files["clip"])
    assert engine.logit_scale == pytest.approx(reference.logit_scale)
    labels = ["cat", "dog"]
    got = engine.zero_shot_classification(photo("chelsea"), labels)
    want = reference.zero_shot_classification(photo("chelsea"), labels)
    assert got == pytest.approx(want, abs=1e-5)
    model = load_model(files["bert"], backend="ort")
    assert isinstance(model, OrtModel) and model.embedding_dim == 32 and model.normalizes


@pytest.mark.parametrize("backend", ["tensorrt", "", None, 3])
def test_unknown_backend_is_refused_with_the_choices(files, backend):
    with pytest.raises(ConfigError, match="'torch', 'onnxruntime'"):
        load_model(files["bert"], backend=backend)
    with pytest.raises(ConfigError, match="'torch', 'onnxruntime'"):
        MultimodalEmbeddingProvider(text_model=files["bert"], backend=backend)


def test_bfloat16_and_gpu_are_refused_on_onnxruntime(files):
    with pytest.raises(ConfigError, match="bfloat16"):
        MultimodalEmbeddingProvider(text_model=files["bert"], backend="onnxruntime", dtype="bf16")
    with pytest.raises(ConfigError, match="CPU"):
        load_model(files["bert"], backend="onnxruntime", device="cuda")


def test_a_generating_family_is_refused():
    from llm_compression.families import preset

    with pytest.raises(UnsupportedFamilyError, match="bert"):
        graphs.check_exportable(preset("smollm2-135m").family)


def test_graphs_are_cached_per_config_then_read_without_export(files, monkeypatch):
    meta = read_metadata(files["bert"])
    folder = graphs.cache_folder(meta.config)
    assert (folder / "info.json").is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 200_000  # weights stay in the file

    def refuse(config):
        raise AssertionError("exported again")

    monkeypatch.setattr("llm_compression.onnxrt.export.export_graphs", refuse)
    assert OrtModel(files["bert"]).encode_text(np.array([[101, 102]])).shape == (1, 32)


def test_convert_onnx_bundles_the_graphs_in_the_file(tmp_path, monkeypatch):
    folder = tiny_bert_folder(tmp_path / "hf", seed=3)
    path = convert(folder, tmp_path / "bert.parquet", dtype="float16", onnx=True)
    bundled = [n for n in read_metadata(path).files if n.startswith("onnx/")]
    assert sorted(bundled) == ["onnx/info.json", "onnx/text.float32.onnx", "onnx/text.int8.onnx"]
    monkeypatch.setenv("LLM_COMPRESSION_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("llm_compression.onnxrt.export.export_graphs", None)  # never called
    ort, ours = load_model(path, backend="onnxruntime"), load_model(path)
    ids = np.array([[101, 2023, 2003, 102]])
    np.testing.assert_allclose(ort.encode_text(ids), ours.encode_text(_torch(ids)), atol=1e-5)
    assert not (tmp_path / "empty").exists()


def test_convert_command_onnx_flag(tmp_path, capsys):
    from llm_compression.cli import main

    folder = tiny_bert_folder(tmp_path / "hf", seed=4)
    out = tmp_path / "bert.parquet"
    assert main(["convert", str(folder), str(out), "--onnx", "--no-progress"]) == 0
    assert "onnx/text.int8.onnx" in read_metadata(out).files
    capsys.readouterr()


def _torch(array):
    import torch

    return torch.from_numpy(array)


# what a fresh process reaching its first embedding on ONNX Runtime does without: torch and
# transformers (~1.4 s / ~4 s of imports), importlib.metadata (~25 ms, only writers record the
# version), pyarrow.dataset (the reader decodes row groups itself)
ORT_PATH_NEVER_IMPORTS = ("torch", "transformers", "importlib.metadata", "pyarrow.dataset")


def test_the_onnxruntime_path_never_imports_torch(files, cache):
    load_model(files["bert"], backend="onnxruntime")  # graphs cached
    code = (
        f"import sys, llm_compression as lc\nLATE = {ORT_PATH_NEVER_IMPORTS!r}\n"
        f"m = lc.load_model({str(files['bert'])!r}, backend='onnxruntime')\n"
        "ids, mask = m.tokenizer.encode_batch(['hello world'], max_length=m.text_context)\n"
        "assert m.encode_text(ids, mask).shape == (1, 32)\n"
        "print(sorted(k for k in LATE if k in sys.modules))\n"
    )
    env = {**os.environ, "LLM_COMPRESSION_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_embed_cli_takes_the_backend(files, tmp_path, capsys):
    from llm_compression.cli import main

    vectors = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.npz"
        code = main(["embed", "--text-model", str(files["bert"]), "--text", "hello", "a cat",
                     "--json", "--backend", backend, "--output", str(out)])  # fmt: skip
        assert code == 0
        assert json.loads(capsys.readouterr().out)["text"]["shape"] == [2, 32]
        vectors[backend] = np.load(out)["text"]
    np.testing.assert_allclose(vectors["onnxruntime"], vectors["torch"], atol=1e-5)


def test_rows_decode_the_largest_first(files, monkeypatch):
    """``_Rows.decode`` hands the threads the largest rows first (the token table), so no
    thread is left decoding a large row alone at the end; every row comes back once."""
    from llm_compression.onnxrt import session
    from llm_compression.weightfile import WeightFile

    file = WeightFile(files["bert"])
    names = [n for n in file.tensors if not n.startswith("unused/")]
    started = []
    one = session._Rows._one
    monkeypatch.setattr(session._Rows, "_one", lambda self, n: started.append(n) or one(self, n))
    out = session._Rows(file, 1).decode(names)
    sizes = [file.tensors[n].stored_bytes for n in started]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert set(out) == set(names)
