"""Declarative name maps (gpt-fast ``weight_map`` style) and the conversion plan they produce.

A map sends an upstream tensor name to a canonical name (``{}`` stands for the layer index),
to ``None`` (drop: buffers, poolers, tied heads) or to a ``Split`` (a fused tensor that is several
canonical tensors concatenated along dim 0). The plan maps each canonical name to its shape and a
loader, so names and shapes are checked before a single tensor is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ..errors import ConversionError
from ..families.maps import Item, Loader, Split, Target
from ..weightfile.format import is_unused, unused_name

# The layer index: the first run of digits between separators ("layers.3.", "layer_3/", "blk.3.").
_LAYER_INDEX = re.compile(r"(?<=[._])(\d+)(?=[./])")
_MAX_LISTED = 12  # names shown in an error message before "... and N more"


def lookup(name: str, weight_map: Mapping[str, Target]) -> tuple[bool, Target]:
    """``(found, target)`` for an upstream name, with the layer index filled into the target."""
    if name in weight_map:
        return True, weight_map[name]
    match = _LAYER_INDEX.search(name)
    if match is None:
        return False, None
    abstract = name[: match.start()] + "{}" + name[match.end() :]
    if abstract not in weight_map:
        return False, None
    target = weight_map[abstract]
    layer = match.group(1)
    if isinstance(target, str):
        return True, target.format(layer)
    if isinstance(target, Split):
        return True, Split(tuple(t if t is None else t.format(layer) for t in target.targets))
    return True, None


def listing(names: Iterable[str]) -> str:
    """A short, sorted, comma-separated list of names for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def build_plan(
    shapes: Mapping[str, tuple[int, ...]],
    load: Callable[[str], np.ndarray],
    weight_map: Mapping[str, Target],
    *,
    source: str,
    source_format: str | None = None,
) -> dict[str, Item]:
    """Apply ``weight_map`` to upstream ``shapes``; unknown upstream names raise ConversionError.

    A tensor mapped to ``None`` (unused by the runtime) is kept as ``unused/<source_format>/<name>``
    (docs/format.md), so a converted file holds every tensor of the source; without
    ``source_format`` (callers that want the canonical tensors only) it is left out.
    """
    plan: dict[str, Item] = {}
    unknown: list[str] = []
    for name, shape in shapes.items():
        found, target = lookup(name, weight_map)
        if not found:
            unknown.append(name)
        elif target is None and source_format is not None:
            plan[unused_name(source_format, name)] = Item(tuple(shape), _loader(load, name))
        elif isinstance(target, str):
            plan[target] = Item(tuple(shape), _loader(load, name))
        elif isinstance(target, Split):
            plan.update(_split_items(name, tuple(shape), target, load))
    if unknown:
        raise ConversionError(
            f"{source} has {len(unknown)} tensors with no canonical name: {listing(unknown)}. "
            "The checkpoint does not match its declared architecture; re-export it with the "
            "upstream library or report the layout so the family's name map (llm_compression/families/) "
            "can cover it"
        )
    return plan


def _loader(load: Callable[[str], np.ndarray], name: str) -> Loader:
    return lambda: load(name)


def _split_items(
    name: str, shape: tuple[int, ...], split: Split, load: Callable[[str], np.ndarray]
) -> dict[str, Item]:
    parts = len(split.targets)
    if not shape or shape[0] % parts:
        raise ConversionError(
            f"fused tensor {name} has shape {shape}; expected dim 0 divisible into {parts} "
            "equal parts (q, k, v); the checkpoint is damaged or not of the declared layout"
        )
    size = shape[0] // parts
    part_shape = (size, *shape[1:])
    items: dict[str, Item] = {}
    for index, target in enumerate(split.targets):
        if target is not None:
            items[target] = Item(part_shape, _part_loader(load, name, split, index, size))
    return items


def _part_loader(
    load: Callable[[str], np.ndarray], name: str, split: Split, index: int, size: int
) -> Loader:
    def part() -> np.ndarray:
        full = load(name)
        for other, target in enumerate(split.targets):
            chunk = full[other * size : (other + 1) * size]
            if target is None and np.any(chunk != 0):
                raise ConversionError(
                    f"part {other} of fused tensor {name} must be all zeros (a bias the model "
                    f"does not have), but its largest magnitude is {np.abs(chunk).max():.3g}; "
                    "the checkpoint is not of the declared architecture"
                )
        return np.ascontiguousarray(full[index * size : (index + 1) * size])

    return part


def _pattern(target: str) -> re.Pattern[str]:
    """A canonical-name template as a regex; ``{}`` (the layer index) becomes a capture group."""
    return re.compile(re.escape(target).replace(re.escape("{}"), r"(\d+)"))


def to_upstream(
    tensors: Mapping[str, np.ndarray], weight_map: Mapping[str, Target], *, source: str
) -> dict[str, np.ndarray]:
    """Canonical-name ``tensors`` under the upstream names of ``weight_map``: the map inverted.

    The first entry that names a canonical tensor wins (BERT's map lists bare ``BertModel`` names
    before ``bert.``-prefixed ones). A ``Split`` entry concatenates its parts back along dim 0, a
    ``None`` part as zeros. A canonical tensor that no entry names raises ConversionError.
    """
    left = dict(tensors)
    out: dict[str, np.ndarray] = {}
    for upstream, target in weight_map.items():
        if isinstance(target, str):
            pattern = _pattern(target)
            for name in [n for n in left if pattern.fullmatch(n)]:
                out[_fill(upstream, pattern.fullmatch(name).groups())] = left.pop(name)
        elif isinstance(target, Split):
            out.update(_join_parts(upstream, target, left))
    if left:
        raise ConversionError(
            f"{source}: {len(left)} tensors have no upstream name in the map: {listing(left)}; "
            "the family's name map does not cover this model"
        )
    return out


def _join_parts(upstream: str, split: Split, left: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fused tensors of one ``Split`` entry, for every layer whose parts are all in ``left``."""
    first = next(t for t in split.targets if t is not None)
    layers = [m.groups() for m in map(_pattern(first).fullmatch, list(left)) if m]
    out = {}
    for groups in layers:
        names = [t if t is None else _fill(t, groups) for t in split.targets]
        if not all(n is None or n in left for n in names):
            continue
        like = left[next(n for n in names if n is not None)]
        parts = [np.zeros_like(like) if n is None else left.pop(n) for n in names]
        out[_fill(upstream, groups)] = np.concatenate(parts)
    return out


def _fill(template: str, groups: tuple[str, ...]) -> str:
    """``template`` with its ``{}`` replaced by the captured layer index (if it has one)."""
    return template.replace("{}", groups[0]) if groups else template


def check_plan(
    plan: Mapping[str, Item], expected: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Every expected canonical tensor is present with its shape, and nothing else (but the
    source's unused tensors)."""
    missing = [n for n in expected if n not in plan]
    unexpected = [n for n in plan if n not in expected and not is_unused(n)]
    wrong = [
        f"{n} {plan[n].shape} (expected {tuple(expected[n])})"
        for n in expected
        if n in plan and tuple(plan[n].shape) != tuple(expected[n])
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {len(wrong)}: {listing(wrong)}")
    raise ConversionError(
        f"{source} does not match the config it declares; " + "; ".join(problems) + ". "
        "Check that config.json belongs to these weights (same size and layer count)"
    )


class LazyTensors(Mapping[str, np.ndarray]):
    """A read-once view of a plan: each tensor is loaded when the writer asks for it."""

    def __init__(self, plan: Mapping[str, Item], order: Iterable[str]) -> None:
        self._plan = plan
        self._order = [n for n in order if n in plan]

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self):
        return iter(self._order)

    def __getitem__(self, name: str) -> np.ndarray:
        item = self._plan[name]
        value = item.load()
        if tuple(value.shape) != item.shape:
            raise ConversionError(
                f"tensor {name} loaded with shape {tuple(value.shape)} but its header says "
                f"{item.shape}; the source file is damaged"
            )
        return value
