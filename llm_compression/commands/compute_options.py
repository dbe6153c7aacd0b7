"""``--dtype`` and ``--backend``: the compute options of the commands that embed (embed, index,
search), one definition so they accept and say the same."""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "int8")
BACKENDS = ("torch", "onnxruntime")


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES,
        help="compute mode: float32 (exact, default), bfloat16 or int8 (faster, approximate)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", default="torch", choices=BACKENDS,
        help="torch (default, exact) or onnxruntime (float32 / int8 encoders on ONNX Runtime)",
    )  # fmt: skip
