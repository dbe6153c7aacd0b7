"""`llm-compression embed` on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from provider_helpers import make_video, photo, photo_path, tiny_model_file

from llm_compression.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "provider_models"
    return {kind: tiny_model_file(kind, root) for kind in ("clip", "bert")}


def test_embed_json_output_and_npz(files, tmp_path, capsys):
    video = make_video(tmp_path / "v.mp4", [photo("chelsea")] * 3)
    out = tmp_path / "vectors.npz"
    code = main([
        "embed", "--text-model", str(files["bert"]), "--clip-model", str(files["clip"]),
        "--text", "a cat", "a rocket", "--image", str(photo_path("chelsea")),
        str(photo_path("rocket")), "--video", str(video), "--frames", "2", "--similarity",
        "--json", "--output", str(out),
    ])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["text"]["shape"] == [2, 32]
    assert summary["image"]["shape"] == [2, 24]
    assert summary["video"]["shape"] == [1, 24]
    assert np.allclose(summary["image"]["norms"], 1.0, atol=1e-4)
    assert np.asarray(summary["text_image_similarity"]).shape == (2, 2)
    saved = np.load(out)
    assert sorted(saved.files) == ["image", "text", "video"]
    assert saved["text"].shape == (2, 32)


def test_embed_plain_text_output(files, capsys):
    assert main(["embed", "--clip-model", str(files["clip"]), "--text", "hello"]) == 0
    assert "text   shape=(1, 24)" in capsys.readouterr().out


def test_embed_flags_may_repeat(files, capsys):
    """Repeated flags add up: "--text a --text b" embeds both (argparse kept only the last)."""
    clip = str(files["clip"])
    assert main(["embed", "--clip-model", clip, "--text", "a cat", "--text", "a dog", "hi"]) == 0
    assert "text   shape=(3, 24)" in capsys.readouterr().out
    photo = str(photo_path("coffee"))
    assert main(["embed", "--clip-model", clip, "--image", photo, "--image", photo]) == 0
    assert "image  shape=(2, 24)" in capsys.readouterr().out


def test_embed_errors_are_one_line(files, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    code = main(["embed", "--clip-model", str(files["clip"]), "--image", str(missing)])
    err = capsys.readouterr().err
    assert code == 2 and "image file not found" in err and "Traceback" not in err
    assert main(["embed", "--clip-model", str(files["clip"])]) == 2
    assert "nothing to embed" in capsys.readouterr().err
    assert main(["embed", "--clip-model", str(files["bert"]), "--text", "x"]) == 2
    assert "expects a CLIP weight file" in capsys.readouterr().err


def test_embed_skip_errors_lists_the_skipped(files, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    code = main([
        "embed", "--clip-model", str(files["clip"]), "--image", str(photo_path("coffee")),
        str(missing), "--skip-errors", "--json",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image"]["shape"] == [1, 24]
    assert summary["skipped"]["image"][0][:2] == [1, str(missing)]
