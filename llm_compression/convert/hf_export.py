"""Export a weight file back to a Hugging Face folder: config.json, model.safetensors, tokenizer files.

The way back out of the format (docs/convert.md, "Export"). Canonical tensors get their upstream
names from the family's Hugging Face name map, inverted (``mapping.to_upstream``); the unused source
tensors a Hugging Face checkpoint came with (``unused/hf/<name>``: a BertModel's pooler, a tied
lm_head) are written back under their own names; config.json comes from the family's
``export_config``; the bundled tokenizer and preprocessing files are written as they are.

Tensors are decoded to float32 (float16/bfloat16 upcast exactly, int8 dequantized); integer
buffers keep their dtype. No ``transformers`` import: numpy, safetensors and the weight file only.

Example
-------
>>> from llm_compression.convert import export
>>> export("minilm.parquet", "minilm-hf/")  # doctest: +SKIP
PosixPath('minilm-hf')
>>> transformers.AutoModel.from_pretrained("minilm-hf/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ConversionError, FormatError, UnsupportedFamilyError
from ..families import config_from_dict, family
from ..weightfile import WeightFile, decode_tensor, is_unused
from ..weightfile.format import split_unused
from .mapping import to_upstream

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
SAFETENSORS = "model.safetensors"


def export(file: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the model in weight file ``file`` as a Hugging Face folder ``dst``.

    Parameters
    ----------
    file : a weight file written by ``llm-compression convert``.
    dst : the folder to write (created; files of the same names in it are replaced).

    Returns
    -------
    Path of the folder, which ``transformers`` loads with ``from_pretrained``.

    Raises
    ------
    UnsupportedFamilyError, ConversionError, FormatError, ModelFileNotFoundError
    """
    weights = WeightFile(file)
    try:
        config = config_from_dict(weights.metadata.config)
    except ConfigError as e:
        raise FormatError(f"{weights.path}: the stored model config cannot be rebuilt: {e}") from e
    source = family(config.family).hf
    if source is None or source.export_config is None:
        raise UnsupportedFamilyError(
            f"{weights.path} is a {config.family!r} model, which has no Hugging Face export; "
            "export supports the families whose module states an export_config"
        )
    tensors = _tensors(weights, source.name_map(config))
    hf_config = source.export_config(config, weights.metadata.files)
    return _write(Path(dst), hf_config, tensors, weights.metadata.files)


def _tensors(weights: WeightFile, name_map) -> dict[str, np.ndarray]:
    """Every tensor under its Hugging Face name: canonical ones renamed, unused ones as stored."""
    canonical = {
        name: decode_tensor(weights, info)
        for name, info in weights.tensors.items()
        if not is_unused(name)
    }
    out = to_upstream(canonical, name_map, source=str(weights.path))
    skipped = []
    for name, info in weights.tensors.items():
        kept = split_unused(name)
        if kept is None:
            continue
        source_format, upstream = kept
        if source_format != "hf":  # a CTranslate2 scalar or GGUF tensor has no HF counterpart
            skipped.append(name)
        elif upstream in out:
            raise ConversionError(
                f"{weights.path}: unused tensor {name!r} has the same upstream name as a model "
                "tensor; the file is damaged or from another converter: re-convert it"
            )
        else:
            out[upstream] = decode_tensor(weights, info)
    if skipped:
        logger.info("not exported (no Hugging Face counterpart): %s", skipped)
    return out


def _write(
    dst: Path, hf_config: dict, tensors: dict[str, np.ndarray], files: dict[str, bytes]
) -> Path:
    from safetensors.numpy import save_file

    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst} is a file; export writes a folder: pass a folder path")
    dst.mkdir(parents=True, exist_ok=True)
    for name in files:
        if (
            name in (CONFIG_JSON, SAFETENSORS)
            or Path(name).is_absolute()
            or ".." in Path(name).parts
        ):
            raise ConversionError(
                f"bundled file {name!r} cannot be written into {dst}; the weight file is damaged: "
                "re-convert the model"
            )
    for name, content in files.items():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(content)
    tmp = dst / f".{SAFETENSORS}.tmp"
    # np.require, not np.ascontiguousarray: that one turns a 0-d tensor (CLIP's logit_scale) 1-d
    contiguous = {k: np.require(v, requirements="C") for k, v in tensors.items()}
    save_file(contiguous, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, dst / SAFETENSORS)
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    (dst / CONFIG_JSON).write_text(text, encoding="utf-8")
    logger.info("exported %d tensors to %s", len(tensors), dst)
    return dst
