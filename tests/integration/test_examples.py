"""Every example in examples/ runs with no arguments and prints its results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_S = 600  # first run converts the models; later runs reuse the cache (~20 s each)
EXPECTED = {
    "zero_shot_classification.py": ["RANDOMLY INITIALISED", "chelsea.png", "sum of probs 1.0000"],
    "text_image_retrieval.py": ["RANDOMLY INITIALISED", "'a kitten'", "-> chelsea"],
    "audio_similarity.py": ["(5, 512) vectors", "cosine similarity", "nearest to"],
    "video_embedding.py": ["RANDOMLY INITIALISED", "video vector (512,)", "still image is refused"],
}


def test_every_example_is_listed():
    found = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=TIMEOUT_S,
        env=env, cwd=EXAMPLES.parent,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    for text in EXPECTED[name]:
        assert text in proc.stdout, f"{name}: {text!r} missing from output:\n{proc.stdout}"
