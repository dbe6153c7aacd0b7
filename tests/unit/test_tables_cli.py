"""`llm-compression index` and `search` through the CLI entry, on tiny random models; and
``add_texts`` / ``add_files`` (embed on insert)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from provider_helpers import photo_path, tiny_model_file, tone

from llm_compression.cli import main
from llm_compression.tables import MultimodalStorage, sniff


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "provider_models"
    return {kind: tiny_model_file(kind, root) for kind in ("clip", "bert", "whisper")}


@pytest.fixture
def corpus(tmp_path):
    """Two texts, a .jsonl of three records, a photo (named .dat), a tone, and three bad files."""
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    (root / "a.txt").write_text("a cat sat on the mat")
    (root / "notes" / "b.md").write_text("rockets fly to the moon")
    lines = [{"text": "first record", "lang": "en"}, {"text": "zweiter", "lang": "de"},
             {"text": "third record"}]  # fmt: skip
    (root / "docs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    shutil.copy(photo_path("chelsea"), root / "cat-photo.dat")  # modality from content
    sf.write(root / "tone.wav", tone(1.0, 440), 16000)
    (root / "junk.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty.txt").write_text("  ")
    (root / "bad.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    return root


def index(models, store, *inputs) -> int:
    return main(["index", *map(str, inputs), "--store", str(store), "--no-progress",
                 "--text-model", str(models["bert"]), "--clip-model", str(models["clip"]),
                 "--audio-model", str(models["whisper"])])  # fmt: skip


def test_sniff_goes_by_content_not_name(corpus):
    assert sniff(corpus / "cat-photo.dat") == "image"
    assert sniff(corpus / "tone.wav") == "audio"
    assert sniff(corpus / "notes" / "b.md") == "text"
    with pytest.raises(ValueError, match="not an image"):
        sniff(corpus / "junk.bin")


def test_index_a_folder_records_failures_and_skips_unchanged_files(
    models, corpus, tmp_path, capsys
):
    store_path = tmp_path / "store"
    assert index(models, store_path, corpus) == 1  # some files failed; the rest went in
    out = capsys.readouterr().out
    assert "5 files stored" in out and "3 failed" in out
    store = MultimodalStorage(store_path)
    assert {m: store.count(m) for m in store.modalities} == {"text": 5, "image": 1, "audio": 1}
    failures = store.failures()
    assert set(failures) == {str(corpus / n) for n in ("junk.bin", "empty.txt", "bad.jsonl")}
    assert "line 2 is not JSON" in failures[str(corpus / "bad.jsonl")]
    row = store.get([f"{corpus / 'docs.jsonl'}#2"], modality="text")
    hit = store.search(np.asarray(row["vector"][0].as_py()), k=1, modality="text")[0]
    assert hit.metadata == {"line": 2} and hit.source == str(corpus / "docs.jsonl")

    assert index(models, store_path, corpus) == 1  # rerun: only the failed files are retried
    assert "0 files stored, 5 unchanged and skipped, 3 failed" in capsys.readouterr().out

    (corpus / "docs.jsonl").write_text(json.dumps({"text": "only one now"}))
    os.utime(corpus / "docs.jsonl", ns=(1, 1))
    (corpus / "junk.bin").unlink()
    (corpus / "empty.txt").unlink()
    (corpus / "bad.jsonl").unlink()
    assert index(models, store_path, corpus) == 0
    assert "1 files stored, 4 unchanged" in capsys.readouterr().out
    assert MultimodalStorage(store_path).count("text") == 3  # the stale lines 2 and 3 went


def test_search_command_text_image_audio_where_and_json(models, corpus, tmp_path, capsys):
    store = tmp_path / "store"
    index(models, store, corpus / "a.txt", corpus / "docs.jsonl", corpus / "cat-photo.dat",
          corpus / "tone.wav")  # fmt: skip
    capsys.readouterr()
    assert main(["search", str(store), "--text", "a cat sat on the mat", "--k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == str(corpus / "a.txt") and abs(hits[0]["score"] - 1) < 1e-4
    assert (
        main(["search", str(store), "--text", "x", "--where", "metadata.line >= 2", "--json"]) == 0
    )
    assert {h["metadata"]["line"] for h in json.loads(capsys.readouterr().out)} == {2, 3}
    assert main(["search", str(store), "--image", str(photo_path("chelsea")), "--k", "1"]) == 0
    assert "cat-photo.dat" in capsys.readouterr().out
    assert main(["search", str(store), "--audio", str(corpus / "tone.wav"), "--k", "1"]) == 0
    assert "tone.wav" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text", "x", "--where", "nonsense ="], "not a valid SQL predicate"),
        (["--image", "missing.png"], "does not exist"),
        (["--text", "x", "--modality", "smell"], "unknown modality"),
    ],
)
def test_bad_search_input_is_one_line_not_a_traceback(models, corpus, tmp_path, capsys, argv,
                                                      message):  # fmt: skip
    store = tmp_path / "store"
    index(models, store, corpus / "a.txt")
    capsys.readouterr()
    assert main(["search", str(store), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_add_texts_and_add_files_embed_with_the_stores_models(models, corpus, tmp_path):
    store = MultimodalStorage(tmp_path / "s", text_model=models["bert"], clip_model=models["clip"])
    ids = store.add_texts(["a cat", "a dog"], metadata=[{"n": 1}, {"n": 2}])
    assert store.search("a cat", k=1)[0].id == ids[0]
    report = store.add_files([corpus / "cat-photo.dat", corpus / "tone.wav"])
    assert list(report.stored) == [str(corpus / "cat-photo.dat")]
    assert "audio" in report.failed[str(corpus / "tone.wav")]  # no audio model: recorded
    table = store.table("text").to_pyarrow_table()
    assert set(table["model"].to_pylist()) == {models["bert"].stem}


def test_index_without_or_with_missing_models_is_one_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello")
    assert main(["index", str(tmp_path / "a.txt"), "--store", str(tmp_path / "s")]) == 2
    assert "needs a model" in capsys.readouterr().err
    argv = [
        "index",
        str(tmp_path / "a.txt"),
        "--store",
        str(tmp_path / "s"),
        "--text-model",
        "no.parquet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_index_and_search_take_dtype_and_backend(models, corpus, tmp_path, capsys):
    """--dtype / --backend build the store's provider: int8 / ONNX Runtime vectors are stored and
    the query, embedded the same way, finds its own file first."""
    pytest.importorskip("onnxruntime")
    store = tmp_path / "store"
    args = ["--store", str(store), "--no-progress", "--text-model", str(models["bert"])]
    assert main(["index", str(corpus / "a.txt"), str(corpus / "notes"), *args,
                 "--dtype", "int8", "--backend", "onnxruntime"]) == 0  # fmt: skip
    capsys.readouterr()
    exact = MultimodalStorage(store, text_model=models["bert"]).provider.encode_batch(
        ["a cat sat on the mat"]
    )[0]
    stored = MultimodalStorage(store).get([str(corpus / "a.txt")], modality="text")
    vector = np.asarray(stored["vector"][0].as_py())
    assert float(vector @ exact) > 0.98 and np.abs(vector - exact).max() > 1e-5  # int8, not f32
    query = ["search", str(store), "--text", "a cat sat on the mat", "--k", "1", "--json"]
    assert main([*query, "--dtype", "int8", "--backend", "onnxruntime"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert hit["id"] == str(corpus / "a.txt") and abs(hit["score"] - 1) < 1e-4
