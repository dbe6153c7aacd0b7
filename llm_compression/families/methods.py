"""Calling one family's method on another family's model: a typed error that names the right file.

``load_model`` returns whichever model the file holds, so ``load_model(path).transcribe(...)`` on a
MiniLM file would otherwise end in torch's bare ``AttributeError``. What each method needs is said
in the registry's terms (a task or a modality), so the message lists the families that have it.
"""

from __future__ import annotations

from typing import Any

from ..errors import WrongFamilyMethodError

# method -> (registry field, value) that a family needs for it
METHOD_NEEDS = {
    "transcribe": ("tasks", "transcribe"),
    "transcribe_segments": ("tasks", "transcribe"),
    "generate": ("tasks", "generate"),
    "generate_ids": ("tasks", "generate"),
    "stream": ("tasks", "generate"),
    "classify": ("tasks", "classify"),
    "logits": ("tasks", "classify"),
    "encode_image": ("modalities", "image"),
    "encode_text": ("modalities", "text"),
    "encode_audio": ("modalities", "audio"),
}


class FamilyMethods:
    """Mixin for the model classes (before ``nn.Module`` in the bases)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, submodules
        except AttributeError:
            if name not in METHOD_NEEDS:
                raise
            raise WrongFamilyMethodError(_message(self, name)) from None


def _message(model: Any, method: str) -> str:
    from . import REGISTRY  # the registry imports the family modules, which import this one

    field, value = METHOD_NEEDS[method]
    able = [f for f in REGISTRY.values() if value in getattr(f, field)]
    kinds = " or ".join(dict.fromkeys(f.describes for f in able))
    family = getattr(getattr(model, "config", None), "family", "?")
    return (
        f"{type(model).__name__} (family {family!r}) has no {method}(); {method} needs {kinds} "
        f"(family {' or '.join(repr(f.name) for f in able)}): load that model's weight file instead"
    )
