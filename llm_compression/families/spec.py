"""What a model family states about itself: one ``Family`` value per family module.

The registry (``families/__init__.py``) lists them; conversion, loading, the provider and the CLI
read everything family-specific from here, so adding a family is one new module and one registry
line. Nothing here assumes a transformer: a family only has to say how to build its model from its
config and how each checkpoint format maps onto its canonical tensor names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .maps import Target

ConfigReader = Callable[..., Any]  # (the source's own metadata, where it came from) -> config
NameMap = Callable[[Any], Mapping[str, Target]]  # config -> {upstream name: canonical target}


@dataclass(frozen=True)
class Source:
    """How one checkpoint format becomes this family.

    ``names`` are how the format names the family (Hugging Face ``model_type`` values,
    CTranslate2 spec names, GGUF ``general.architecture`` values); ``architectures`` are Hugging
    Face class names that identify it when ``model_type`` is absent (class -> model_type).
    ``fix_plan(plan, config)`` rewrites the plan after mapping (GGUF's permuted q/k rows).
    ``extra_files`` are further files of a folder that are recorded as sources when present.
    ``export_config(config, files) -> dict`` (Hugging Face sources only) is the inverse of
    ``config``: the ``config.json`` that ``llm-compression export`` writes beside the tensors,
    named by inverting ``name_map`` (``files``: the weight file's bundled files).
    """

    names: tuple[str, ...]
    config: ConfigReader
    name_map: NameMap
    architectures: Mapping[str, str] = field(default_factory=dict)
    fix_plan: Callable[[dict, Any], dict] | None = None
    extra_files: tuple[str, ...] = ()
    export_config: Callable[[Any, Mapping[str, bytes]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Family:
    """One model family: its config class, its model, its sources, what its files are for.

    Parameters
    ----------
    name : the value of ``family`` in configs and weight files.
    config_class : a frozen dataclass; ``config_class.family`` is ``name`` (or a field for
        families sharing one config class).
    model_class : ``model_class(config)`` builds the model; every parameter is a canonical tensor.
    modalities : what its files embed for the provider (``("text",)``, ``("image", "text")``,
        ``("audio",)``; empty for generative models).
    tasks : what its models do beyond embedding: ``"transcribe"``, ``"generate"``, ``"classify"``.
    tokenizer : its files bundle a tokenizer (``load_model`` attaches it as ``model.tokenizer``).
    image_pixels : for image families, ``(images, config, max_pixels) -> (N, 3, S, S)`` tensor:
        the family's own image preprocessing (CLIP's bicubic resize and crop, ImageNet's ...).
    describes : what a file of this family is, in words, for error messages.
    provider_argument : the provider argument its files go to (or how else to use them).
    embedding_dim : config -> length of its embeddings (None when it does not embed).
    hf, ct2, gguf : the checkpoint formats it converts from.
    state_dict : a bare PyTorch state dict (``.pth``), read with ``weights_only=True``; such a
        file names no architecture, so conversion needs the family given.
    presets : named configs.
    """

    name: str
    config_class: type
    model_class: Callable[[Any], Any]
    describes: str
    provider_argument: str
    modalities: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    tokenizer: bool = True
    image_pixels: Callable[[Any, Any, int], Any] | None = None
    embedding_dim: Callable[[Any], int] | None = None
    hf: Source | None = None
    ct2: Source | None = None
    gguf: Source | None = None
    state_dict: Source | None = None
    presets: Mapping[str, Any] = field(default_factory=dict)
