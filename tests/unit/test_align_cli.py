"""`llm-compression align train` and `llm-compression report` end to end on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_tiny import tiny_causal_lm, tiny_tokenizer_files
from PIL import Image
from provider_helpers import make_video

from llm_compression.align import load_checkpoint
from llm_compression.cli import main
from llm_compression.convert import convert


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, files):
    root = tmp_path_factory.mktemp("align_cli")
    hf, _, _ = tiny_causal_lm("llama", vocab_size=300)
    hf.save_pretrained(root / "hf_llm")
    for name, data in tiny_tokenizer_files().items():
        (root / "hf_llm" / name).write_bytes(data)
    llm = convert(root / "hf_llm", root / "llm.parquet", dtype="float32")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        label = "cat" if i % 2 else "dog"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        row = {"id": f"r{i}", "image": f"{i}.png", "text": f"a {label} number {i}",
               "label": label, "emotion": "calm", "behaviours": ["resting"]}  # fmt: skip
        if i == 3:
            del row["image"]  # a record with a missing modality
        if i >= 4:  # video records: frames through the image encoder
            frames = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
            row["video"] = make_video(root / f"{i}.mp4", frames).name
        rows.append(row)
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "align.toml").write_text(f"""
dataset = "records.jsonl"
cache = "cache"
out = "runs"
batch_size = 4
workers = 1
prompt_tokens = 2
hidden = 16
dim = 16
[models]
text = "{files["bert"]}"
image = "{files["clip"]}"
video = "{files["clip"]}"
llm = "{llm}"
[[stages]]
name = "cross"
epochs = 2
pairs = [["text", "image"], ["video", "text"]]
train = ["text", "image", "video"]
[[stages]]
name = "report"
epochs = 1
align_weight = 0.0
report_weight = 1.0
train = ["projector"]
""")
    return root


def test_train_then_report(workdir, capsys):
    assert main(["align", "train", str(workdir / "align.toml")]) == 0
    checkpoint = workdir / "runs" / "align.parquet"
    assert capsys.readouterr().out.strip() == str(checkpoint)
    model = load_checkpoint(checkpoint)
    assert model.config.modalities == ("image", "text", "video")
    assert model.config.labels == ("cat", "dog")
    metrics = (workdir / "runs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["stage"] for m in metrics] == ["cross", "cross", "report"]
    for argv in (["--text", "a cat"], ["--image", str(workdir / "0.png")],
                 ["--text", "a dog", "--image", str(workdir / "1.png")],
                 ["--video", str(workdir / "5.mp4")]):  # fmt: skip
        assert main(["report", "--checkpoint", str(checkpoint), "--json", *argv]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report) == {"emotion", "behaviours", "confidence", "evidence"}
        assert report["evidence"]["video"]["present"] == ("--video" in argv)
    assert main(["report", "--checkpoint", str(checkpoint), "--text", "a cat"]) == 0
    assert "emotion:" in capsys.readouterr().out


def test_resume_from_a_checkpoint_runs_only_the_named_stage(workdir, capsys, tmp_path):
    import torch

    first = workdir / "runs" / "align.parquet"
    if not first.exists():
        assert main(["align", "train", str(workdir / "align.toml")]) == 0
    start = tmp_path / "start.parquet"
    start.write_bytes(first.read_bytes())
    argv = [
        "align",
        "train",
        str(workdir / "align.toml"),
        "--from",
        str(start),
        "--stage",
        "report",
    ]
    assert main(argv) == 0
    metrics = (workdir / "runs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["stage"] for m in metrics] == ["report"]
    before, after = load_checkpoint(start).state_dict(), load_checkpoint(first).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"projector"}  # the report stage trains the projector only
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, match",
    [(["report", "--checkpoint", "x.parquet"], "no input given"),
     (["report", "--checkpoint", "none.parquet", "--text", "t"], "no alignment checkpoint"),
     (["align", "train", "none.toml"], "no config file"),
     (["align", "train", "{workdir}/align.toml", "--stage", "warp"], "no stage named"),
     (["align", "train", "{workdir}/align.toml", "--from", "{workdir}/0.png"], "not a Parquet weight file")],
)  # fmt: skip
def test_bad_input_is_one_line_no_traceback(workdir, tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main([a.format(workdir=workdir) for a in argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
