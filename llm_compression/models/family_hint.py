"""Calling one family's method on another family's model: a typed error that names the right file.

``load_model`` returns whichever model the file holds, so ``load_model(path).transcribe(...)`` on a
MiniLM file would otherwise end in torch's bare ``AttributeError``.
"""

from __future__ import annotations

from typing import Any

from ..errors import WrongFamilyMethodError

# method -> the models that have it
FAMILY_METHODS = {
    "transcribe": "Whisper",
    "embed_audio": "Whisper",
    "generate": "a causal LM (OLMo, Llama)",
    "generate_ids": "a causal LM (OLMo, Llama)",
    "stream": "a causal LM (OLMo, Llama)",
    "embed_images": "CLIP",
    "encode_image": "CLIP",
    "encode_text": "CLIP",
    "embed_texts": "CLIP or a sentence encoder (MiniLM/BERT)",
}


class FamilyMethods:
    """Mixin for the model classes (before ``nn.Module`` in the bases)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, submodules
        except AttributeError:
            if name not in FAMILY_METHODS:
                raise
            family = getattr(self.config, "family", "?")
            raise WrongFamilyMethodError(
                f"{type(self).__name__} (family {family!r}) has no {name}(); {name} needs "
                f"{FAMILY_METHODS[name]}: load that model's weight file instead"
            ) from None
