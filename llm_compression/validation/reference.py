"""The Hugging Face reference model for a weight file, built from the same upstream source.

- HF folder: ``from_pretrained`` (CLIPModel, WhisperForConditionalGeneration, BertModel with the
  sentence-transformers pooling of its ``1_Pooling`` config, AutoModelForCausalLM for OLMo-1,
  OLMo-2 and Llama) and the folder's own tokenizer.
- GGUF file: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`` (dequantized float32).
- CTranslate2 Whisper folder: see :mod:`.hf_whisper`.

Tokenizers come from the source folder when it has one, else from the tokenizer.json (and
tokenizer_config.json) stored in the weight file, through ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..convert.ct2 import peek_spec
from ..convert.gguf_reader import is_gguf
from ..errors import (
    ConversionError,
    LLMCompressionError,
    ModelFileNotFoundError,
    UnsupportedFamilyError,
)

logger = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclass
class Reference:
    """An HF model in float32 eval mode, its tokenizer and family-specific settings."""

    family: str
    model: Any
    tokenizer: Any
    source: str
    settings: dict[str, Any] = field(default_factory=dict)


def source_kind(src: Path) -> tuple[str, Path]:
    """``("hf" | "gguf" | "ct2", path)`` of a reference source."""
    if not src.exists():
        raise ModelFileNotFoundError(
            f"reference source {src} does not exist; pass the folder or file converted"
        )
    if src.is_file():
        if is_gguf(src):
            return "gguf", src
        if peek_spec(src):
            return "ct2", src
    elif (src / "config.json").is_file() and _hf_config(src):
        return "hf", src
    elif (src / "model.bin").is_file() and peek_spec(src / "model.bin"):
        return "ct2", src / "model.bin"
    else:
        ggufs = sorted(p for p in src.iterdir() if p.is_file() and is_gguf(p))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
    raise UnsupportedFamilyError(
        f"{src} is not a reference source: expected a Hugging Face folder (config.json with "
        "model_type), a CTranslate2 folder (model.bin) or a GGUF file"
    )


def _hf_config(folder: Path) -> dict[str, Any]:
    cfg = json.loads((folder / "config.json").read_text())
    return (
        cfg if isinstance(cfg, dict) and (cfg.get("model_type") or cfg.get("architectures")) else {}
    )


def tokenizer_from_files(files: Mapping[str, bytes]):
    """``PreTrainedTokenizerFast`` from the tokenizer.json (+ tokenizer_config.json) of a weight file."""
    from tokenizers import Tokenizer as Backend
    from transformers import PreTrainedTokenizerFast

    if TOKENIZER_JSON not in files:
        raise ModelFileNotFoundError(
            f"the weight file stores no {TOKENIZER_JSON} (it has {sorted(files)}); re-convert it"
        )
    config = json.loads(files[TOKENIZER_CONFIG]) if TOKENIZER_CONFIG in files else {}
    kwargs = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Backend.from_str(files[TOKENIZER_JSON].decode()), **kwargs
    )
    if config.get("chat_template"):
        tok.chat_template = config["chat_template"]
    return tok


def _folder_tokenizer(folder: Path, files: Mapping[str, bytes]):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # transformers raises many types; the stored tokenizer is the fallback
        logger.info("no tokenizer loads from %s (%s); using the weight file's", folder, e)
        return tokenizer_from_files(files)


def sentence_pooling(folder: Path) -> dict[str, Any]:
    """pooling / normalize / max_seq_length of a sentence-transformers folder (read independently)."""
    out: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_seq_length": None}
    modules_path = folder / "modules.json"
    modules = json.loads(modules_path.read_text()) if modules_path.is_file() else []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Normalize":
            out["normalize"] = True
        if kind == "Pooling":
            cfg = json.loads((folder / module.get("path", "1_Pooling") / "config.json").read_text())
            modes = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean"}  # fmt: skip
            out["pooling"] = next((m for k, m in modes.items() if cfg.get(k)), "mean")
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        out["max_seq_length"] = json.loads(st.read_text()).get("max_seq_length")
    return out


def _loaded(load: Callable[[], Any], source: Path) -> Any:
    """``load()`` (a transformers ``from_pretrained``), its failures as one ConversionError."""
    try:
        return load()
    except Exception as e:  # transformers raises many types: OSError, ValueError, UnpicklingError
        if isinstance(e, LLMCompressionError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(
            f"transformers cannot load the reference model from {source}: {first} "
            f"({type(e).__name__}); pass the folder or file the weight file was converted from, "
            "with safetensors weights"
        ) from e


def _from_hf(folder: Path, family: str, files: Mapping[str, bytes]) -> Reference:
    return _loaded(lambda: _from_hf_unchecked(folder, family, files), folder)


def _from_hf_unchecked(folder: Path, family: str, files: Mapping[str, bytes]) -> Reference:
    import transformers as tf

    kwargs = {"dtype": "float32"}
    settings: dict[str, Any] = {}
    if family == "clip":
        model = tf.CLIPModel.from_pretrained(folder, **kwargs)
        settings["image_processor"] = tf.CLIPImageProcessor()
    elif family == "whisper":
        model = tf.WhisperForConditionalGeneration.from_pretrained(folder, **kwargs)
    elif family == "bert":
        model = tf.BertModel.from_pretrained(folder, add_pooling_layer=False, **kwargs)
        settings.update(sentence_pooling(folder))
    elif family in ("olmo", "llama"):
        model = tf.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    else:
        raise UnsupportedFamilyError(f"no HF reference for family {family!r}")
    tokenizer = _folder_tokenizer(folder, files)
    return Reference(family, model.eval(), tokenizer, str(folder), settings)


def build_reference(src: str | Path, family: str, files: Mapping[str, bytes]) -> Reference:
    """The HF reference for a weight file of ``family`` converted from ``src``.

    ``files`` are the files stored in the weight file (its tokenizer is the fallback).
    """
    kind, path = source_kind(Path(src))
    if kind == "hf":
        return _from_hf(path, family, files)
    if kind == "gguf":
        if family not in ("llama", "olmo"):
            raise UnsupportedFamilyError(f"{path} is a GGUF file but the weight file is {family!r}")
        from transformers import AutoModelForCausalLM

        model = _loaded(
            lambda: AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype="float32"
            ),
            path,
        )
        return Reference(family, model.eval(), tokenizer_from_files(files), str(path))
    if family != "whisper":
        raise UnsupportedFamilyError(
            f"{path} is a CTranslate2 Whisper model but the weight file is {family!r}"
        )
    from .hf_whisper import whisper_from_ct2

    tokenizer = tokenizer_from_files(files)
    model, _ = whisper_from_ct2(path, tokenizer)
    return Reference(family, model, tokenizer, str(path.parent))
