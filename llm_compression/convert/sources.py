"""Recognise a checkpoint (HF folder, CTranslate2 model.bin, GGUF) and prepare its conversion.

The family comes from the checkpoint's own metadata: Hugging Face ``config.json`` (``model_type``,
then ``architectures``), the CTranslate2 spec name, or GGUF ``general.architecture``. A family
given by the caller is used only when the checkpoint does not say, and must agree otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConversionError, ModelFileNotFoundError, UnsupportedFamilyError
from ..families import FAMILIES, REGISTRY, Source
from .ct2 import CT2Model, peek_spec
from .files import TOKENIZER_JSON, Bundle, gguf_tokenizer, hf_tokenizer
from .gguf_reader import GGUFFile, is_gguf
from .mapping import Item, build_plan
from .readers import WEIGHT_FILES, HFWeights, StateDictFile, is_torch_file, read_json

logger = logging.getLogger(__name__)

CT2_WEIGHTS = "model.bin"


@dataclass
class Prepared:
    """A checkpoint ready to write: its config, the canonical tensors and the bundled files."""

    config: Any
    plan: dict[str, Item]
    bundle: Bundle
    description: str


def _unsupported(what: str, where: Path) -> UnsupportedFamilyError:
    return UnsupportedFamilyError(
        f"{where} is {what}, which is not a supported model family; supported families: "
        f"{list(FAMILIES)}"
    )


def _agree(detected: str, requested: str | None, where: Path, evidence: str) -> str:
    if requested is not None and requested != detected:
        raise ConversionError(
            f"{where} is a {detected!r} checkpoint ({evidence}) but family={requested!r} was "
            f"requested; drop the family option or point at a {requested} checkpoint"
        )
    return detected


def _formats(kind: str) -> dict[str, tuple[str, Source]]:
    """How checkpoints of format ``kind`` ("hf", "ct2", "gguf") name families: name -> (family, source)."""
    out: dict[str, tuple[str, Source]] = {}
    for name, fam in REGISTRY.items():
        source = getattr(fam, kind)
        for key in source.names if source else ():
            out[key] = (name, source)
    return out


def _hf_architectures() -> dict[str, str]:
    """Hugging Face class name -> model_type, over every family."""
    return {a: t for fam in REGISTRY.values() if fam.hf for a, t in fam.hf.architectures.items()}


def prepare(src: Path, family: str | None = None, *, keep_quantized: bool = False) -> Prepared:
    """Find what ``src`` is and build its config, plan and bundle."""
    if family is not None and family not in FAMILIES:
        raise UnsupportedFamilyError(
            f"family={family!r} is not supported; choose one of {list(FAMILIES)}"
        )
    src = Path(src)
    if not src.exists():
        raise ModelFileNotFoundError(f"{src} does not exist; pass a checkpoint folder or file")
    if src.is_file():
        if is_gguf(src):
            return _from_gguf(src, family, keep_quantized)
        if peek_spec(src):
            return _from_ct2(src, family)
        if is_torch_file(src):
            return _from_state_dict(src, family)
        raise ConversionError(
            f"{src} is neither a GGUF file, a CTranslate2 model.bin nor a PyTorch state dict; for "
            "a Hugging Face checkpoint pass its folder (the one holding config.json)"
        )
    config_path = src / "config.json"
    cfg = read_json(config_path) if config_path.is_file() else None
    if isinstance(cfg, dict) and (cfg.get("model_type") or cfg.get("architectures")):
        return _from_hf(src, cfg, family)
    if (src / CT2_WEIGHTS).is_file() and peek_spec(src / CT2_WEIGHTS):
        return _from_ct2(src / CT2_WEIGHTS, family)
    ggufs = sorted(p for p in src.iterdir() if p.is_file() and is_gguf(p))
    if len(ggufs) == 1:
        return _from_gguf(ggufs[0], family, keep_quantized)
    if len(ggufs) > 1:
        raise ConversionError(
            f"{src} holds {len(ggufs)} GGUF files {[p.name for p in ggufs]}; pass one file"
        )
    if isinstance(cfg, dict):
        return _from_hf(src, cfg, family)
    raise ConversionError(
        f"no checkpoint in {src}: looked for config.json with {', '.join(WEIGHT_FILES)} "
        f"(Hugging Face), {CT2_WEIGHTS} (CTranslate2) and a *.gguf file"
    )


def _hf_kind(folder: Path, cfg: dict[str, Any], family: str | None) -> tuple[str, str]:
    """(family, model_type) of a Hugging Face folder."""
    where = folder / "config.json"
    model_type = cfg.get("model_type")
    if not model_type:
        known = _hf_architectures()
        archs = [a for a in cfg.get("architectures") or [] if a in known]
        model_type = known[archs[0]] if archs else None
    if model_type:
        if model_type not in _formats("hf"):
            raise _unsupported(f"model_type {model_type!r}", where)
        detected = _formats("hf")[model_type][0]
        return _agree(detected, family, where, f"model_type {model_type!r}"), model_type
    if cfg.get("architectures"):
        raise _unsupported(f"architectures {cfg['architectures']}", where)
    if family is None:
        raise UnsupportedFamilyError(
            f"{where} names neither model_type nor architectures; pass family=... (one of "
            f"{list(FAMILIES)}) or add model_type to config.json"
        )
    names = REGISTRY[family].hf.names if REGISTRY[family].hf else ()
    if len(names) != 1:
        raise ConversionError(
            f"{where} has no model_type and family {family!r} has several: set model_type to one "
            f"of {list(names)}"
        )
    return family, names[0]


def _from_hf(folder: Path, cfg: dict[str, Any], family: str | None) -> Prepared:
    family, model_type = _hf_kind(folder, cfg, family)
    source = REGISTRY[family].hf
    config = source.config({**cfg, "model_type": model_type}, folder)
    weights = HFWeights(folder)
    plan = build_plan(
        weights.shapes, weights.load, source.name_map(config), source=str(folder),
        source_format="hf",
    )  # fmt: skip
    bundle = Bundle(folder)
    bundle.source(folder / "config.json")
    for path in weights.files:
        bundle.source(path)
    for name in source.extra_files:
        if (folder / name).is_file():
            bundle.source(folder / name)
    hf_tokenizer(bundle, folder)
    return Prepared(config, plan, bundle, str(folder))


def _detect(kind: str, name: Any, family: str | None, where: Path, what: str) -> Source:
    """The family source of format ``kind`` that the checkpoint's own ``name`` identifies."""
    known = _formats(kind)
    if name not in known:
        raise _unsupported(f"{what} {name!r}", where)
    _agree(known[name][0], family, where, f"{what} {name!r}")
    return known[name][1]


def _from_ct2(model_bin: Path, family: str | None) -> Prepared:
    folder = model_bin.parent
    model = CT2Model(model_bin)
    source = _detect("ct2", model.spec, family, model_bin, "a CTranslate2 spec")
    bundle = Bundle(folder)
    bundle.source(model_bin)
    ct2_json: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        ct2_json = read_json(folder / "config.json")
        bundle.source(folder / "config.json")
    else:
        logger.warning("%s has no config.json: no suppressed tokens recorded", folder)
    if not (folder / TOKENIZER_JSON).is_file():
        raise ConversionError(
            f"no {TOKENIZER_JSON} beside {model_bin}; copy the model's tokenizer.json into {folder}"
        )
    bundle.copy(folder / TOKENIZER_JSON)
    config = source.config(model, ct2_json)
    plan = build_plan(
        model.shapes, model.load, source.name_map(config), source=str(model_bin),
        source_format="ct2",
    )  # fmt: skip
    return Prepared(config, plan, bundle, str(model_bin))


def _from_gguf(path: Path, family: str | None, keep_quantized: bool = False) -> Prepared:
    gguf = GGUFFile(path)
    arch = gguf.get("general.architecture")
    source = _detect("gguf", arch, family, path, "a GGUF of architecture")
    config = source.config(gguf)
    plan = build_plan(
        gguf.shapes,
        gguf.load_kept if keep_quantized else gguf.load,
        source.name_map(config),
        source=str(path),
        source_format="gguf",
    )
    if source.fix_plan is not None:
        plan = source.fix_plan(plan, config)
    bundle = Bundle(path.parent)
    bundle.source(path)
    gguf_tokenizer(bundle, path, gguf.metadata, config.body.max_positions)
    return Prepared(config, plan, bundle, str(path))


def _from_state_dict(path: Path, family: str | None) -> Prepared:
    """A bare state dict: it names no architecture, so the family must be given."""
    able = [name for name, fam in REGISTRY.items() if fam.state_dict is not None]
    if family is None or family not in able:
        raise ConversionError(
            f"{path} is a bare PyTorch state dict, which names no architecture; pass the family "
            f"(`--family` / family=), one of {able}"
            + (f" (family {family!r} does not convert from state dicts)" if family else "")
        )
    source = REGISTRY[family].state_dict
    state = StateDictFile(path)
    config = source.config(state.shapes, path)
    plan = build_plan(state.shapes, state.load, source.name_map(config), source=str(path))
    bundle = Bundle(path.parent)
    bundle.source(path)
    return Prepared(config, plan, bundle, str(path))
