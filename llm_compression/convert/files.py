"""Tokenizer and preprocessing files bundled into the weight file, and source hashes.

Every converted model carries a ``tokenizer.json`` (tokenizers library format), plus
``tokenizer_config.json`` (special tokens, chat template, model_max_length) when the source has one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConversionError
from .readers import sha256_file

logger = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Copied as they are when present beside the weights.
HF_EXTRA_FILES = (
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "preprocessor_config.json",
    "generation_config.json",
)
# Files from which transformers can build a tokenizer.json when the folder has none.
TOKENIZER_SOURCES = ("vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model")


class Bundle:
    """Files to store in the weight file and the sha256 of every source file read."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files: dict[str, bytes] = {}
        self.sources: dict[str, str] = {}

    def source(self, path: Path) -> None:
        """Record ``path``'s sha256 under its name relative to the source folder."""
        path = Path(path)
        try:
            key = str(path.relative_to(self.root))
        except ValueError:
            key = path.name
        self.sources[key] = sha256_file(path)

    def copy(self, path: Path, name: str | None = None) -> None:
        """Store ``path`` (and record it as a source)."""
        self.files[name or Path(path).name] = Path(path).read_bytes()
        self.source(path)


def _chat_template(bundle: Bundle, folder: Path) -> None:
    """Newer transformers save the chat template as chat_template.jinja: fold it into
    tokenizer_config.json, where the runtime looks for it."""
    path = folder / CHAT_TEMPLATE_FILE
    if not path.is_file():
        return
    raw = bundle.files.get(TOKENIZER_CONFIG, b"{}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{folder / TOKENIZER_CONFIG} is not valid JSON: {e}") from e
    config["chat_template"] = path.read_text(encoding="utf-8")
    bundle.files[TOKENIZER_CONFIG] = json.dumps(config, indent=2, ensure_ascii=False).encode()
    bundle.source(path)


def hf_tokenizer(bundle: Bundle, folder: Path) -> None:
    """tokenizer.json (as is, or built by transformers) and the config files beside it."""
    for name in HF_EXTRA_FILES:
        if (folder / name).is_file():
            bundle.copy(folder / name)
    _chat_template(bundle, folder)
    if (folder / TOKENIZER_JSON).is_file():
        bundle.copy(folder / TOKENIZER_JSON)
        return
    present = [n for n in TOKENIZER_SOURCES if (folder / n).is_file()]
    if not present:
        raise ConversionError(
            f"no tokenizer in {folder}: looked for {TOKENIZER_JSON} or {', '.join(TOKENIZER_SOURCES)}; "
            "copy the model's tokenizer files (e.g. tokenizer.save_pretrained(folder)) beside config.json"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # transformers raises many error types here
        raise ConversionError(
            f"cannot build a tokenizer from {present} in {folder}: {e}; add a tokenizer.json"
        ) from e
    bundle.files[TOKENIZER_JSON] = tokenizer.backend_tokenizer.to_str().encode("utf-8")
    for name in present:
        bundle.source(folder / name)
    logger.info("built tokenizer.json from %s", present)


def gguf_tokenizer(bundle: Bundle, path: Path, metadata: dict[str, Any], context: int) -> None:
    """tokenizer.json built by transformers from the GGUF vocabulary, and a tokenizer_config.json
    holding the GGUF chat template and special tokens."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # transformers raises many error types here
        raise ConversionError(f"cannot build a tokenizer from {path}: {e}") from e
    bundle.files[TOKENIZER_JSON] = tok.backend_tokenizer.to_str().encode("utf-8")
    config: dict[str, Any] = {
        "model_max_length": context,
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
    }
    for role in ("bos", "eos", "unk", "pad"):
        token = getattr(tok, f"{role}_token", None)
        if token is not None:
            config[f"{role}_token"] = str(token)
    template = metadata.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    bundle.files[TOKENIZER_CONFIG] = json.dumps(config, indent=2, ensure_ascii=False).encode()
