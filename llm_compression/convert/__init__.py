"""Convert upstream checkpoints to llm_compression weight files (docs/convert.md).

Sources: Hugging Face folders (safetensors, sharded safetensors, pytorch_model.bin) of CLIP,
Whisper, BERT/MiniLM, OLMo-1, OLMo-2 and Llama; CTranslate2 Whisper folders; GGUF files of
Llama-family models. Upstream tensor names appear only in this package, in declarative maps.
``export`` is the way back: a weight file -> a Hugging Face folder.

Example
-------
>>> from llm_compression.convert import convert
>>> convert("all-MiniLM-L6-v2/", "minilm.parquet", dtype="float16")  # doctest: +SKIP
PosixPath('minilm.parquet')
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ConfigError
from ..families import build_model, quantizable_names, tensor_shapes
from .hf_export import export
from .mapping import LazyTensors, check_plan
from .sources import prepare

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16", "int8", "int4", "gguf")

__all__ = ["DTYPES", "convert", "convert_cached", "export", "is_current"]


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    family: str | None = None,
    dtype: str = "float16",
    progress: bool = False,
    onnx: bool = False,
) -> Path:
    """Convert the checkpoint at ``src`` into the Parquet weight file ``dst``.

    Parameters
    ----------
    src : a Hugging Face folder, a CTranslate2 folder (or its model.bin), or a GGUF file (or a
        folder holding exactly one).
    dst : the weight file to write; written aside and renamed, so it never exists half-written.
    family : only for checkpoints that do not name their architecture; otherwise it must agree.
    dtype : storage dtype: float32 | float16 | bfloat16 | int8 (per-output-channel linear weights)
        | int4 (group-wise, groups of 32 inputs) | gguf (a GGUF's Q4_0 / Q4_1 / Q8_0 matrices kept
        as they are, without requantizing; other tensors float32).
    progress : show a progress bar while writing.
    onnx : also store the weight-free ONNX graphs of the model's encoders among the file's
        bundled files (``onnx/``, a few hundred KB), so ``backend="onnxruntime"`` never needs
        torch to export them (embedding families only; decision 0010).

    Returns
    -------
    Path of the written weight file.

    Raises
    ------
    UnsupportedFamilyError, ConversionError, ModelFileNotFoundError, ConfigError
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; choose one of {list(DTYPES)}")
    if dtype == "gguf" and not _holds_gguf(Path(src)):
        raise ConfigError(
            f"dtype='gguf' keeps a GGUF's own blocks (Q4_0, Q4_1, Q8_0), but {src} is not a GGUF "
            "file; choose float32, float16, bfloat16, int8 or int4 for other checkpoints"
        )
    prepared = prepare(Path(src), family, keep_quantized=dtype == "gguf")
    model = build_model(prepared.config)  # on the meta device: names, shapes, layer types
    expected = tensor_shapes(model)
    check_plan(prepared.plan, expected, prepared.description)
    logger.info(
        "converting %s (%s, %d tensors) to %s as %s",
        prepared.description, prepared.config.family, len(expected), dst, dtype,
    )  # fmt: skip
    from ..weightfile import is_unused, write_model

    files = dict(prepared.bundle.files)
    if onnx:
        from ..onnxrt.export import export_graphs

        files.update(export_graphs(prepared.config))

    unused = [name for name in prepared.plan if is_unused(name)]  # kept after the model's tensors
    return write_model(
        dst,
        LazyTensors(prepared.plan, [*expected, *unused]),
        config=prepared.config,
        dtype=dtype,
        quantize=quantizable_names(model),
        files=files,
        sources=prepared.bundle.sources,
        progress=progress,
    )


def _holds_gguf(src: Path) -> bool:
    from .gguf_reader import is_gguf

    if src.is_dir():
        return sum(1 for p in src.iterdir() if p.is_file() and is_gguf(p)) == 1
    return src.is_file() and is_gguf(src)


def is_current(path: str | os.PathLike, *, dtype: str) -> bool:
    """True when ``path`` is a weight file this version reads, stored as ``dtype``.

    Caches of converted files (the demo, the examples) use it to re-convert files written by an
    older format instead of failing on them.
    """
    from ..errors import FormatError, ModelFileNotFoundError
    from ..weightfile import read_metadata

    try:
        return read_metadata(path).storage_dtype == dtype
    except (FormatError, ModelFileNotFoundError):
        return False


def convert_cached(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str = "float16",
    family: str | None = None,
    progress=False,
) -> Path:
    """``convert(src, dst)`` unless ``dst`` already ``is_current``; returns ``dst``."""
    if is_current(dst, dtype=dtype):
        return Path(dst)
    return convert(src, dst, family=family, dtype=dtype, progress=progress)
