"""A weight file cut short or replaced under an open WeightLoader: typed errors, not SIGBUS (10.3).

Each case runs in a child process, so a bus error fails one test instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_SETUP = """
import os, sys
import numpy as np
from llm_compression.families import preset
from llm_compression.errors import CorruptFileError
from llm_compression.loader import WeightLoader
from llm_compression.weightfile import write_model

path, dtype = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
tensors = {f"layers.{i}.w.weight": rng.standard_normal((256, 512)).astype(np.float32)
           for i in range(4)}
"""

_CASES = {
    "truncated": "os.truncate(path, os.path.getsize(path) // 2)",
    "emptied": "os.truncate(path, 0)",
    "replaced": (
        "write_model(path + '.new', {'x': np.ones(3, np.float32)}, "
        "config=preset('all-minilm-l6-v2'))\nos.replace(path + '.new', path)"
    ),
    "removed": "os.remove(path)",
}

_READ = """
    for read in (lambda: loader.get_layer("layers.3.w.weight"), loader.load_weights):
        try:
            read()
        except CorruptFileError as e:
            print(dtype, "typed:", e)
        else:
            print(dtype, "no error")
"""


def _run(tmp_path, case: str) -> subprocess.CompletedProcess:
    per_dtype = (
        "for dtype in ('float16', 'bfloat16', 'int8', 'float32'):\n"
        "    write_model(path, tensors, config=preset('all-minilm-l6-v2'), dtype=dtype)\n"
        "    loader = WeightLoader(path)\n"
        "    loader.get_layer('layers.0.w.weight')  # the loader has read from the file\n"
        + textwrap.indent(_CASES[case], "    ")
    )
    code = _SETUP + per_dtype + _READ
    args = [sys.executable, "-c", code, str(tmp_path / "m.parquet"), "unused"]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["truncated", "emptied", "replaced", "removed"])
def test_changed_file_under_an_open_loader_is_a_typed_error(tmp_path, case):
    done = _run(tmp_path, case)
    assert done.returncode == 0, f"exit {done.returncode} (-7 is SIGBUS): {done.stderr[-2000:]}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 8 and all(" typed: " in line for line in lines), done.stdout
    word = {"truncated": "cut to", "emptied": "cut to", "replaced": "replaced", "removed": "gone"}
    assert all(word[case] in line for line in lines), done.stdout
