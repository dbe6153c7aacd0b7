"""Normalising what users pass (one item or many) into lists, and checking texts and waveforms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """One string or a sequence of strings -> list of strings (``InputError`` otherwise)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray) or not isinstance(texts, Sequence):
        raise InputError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(
                f"texts[{i}] is {type(t).__name__}, expected str; convert it with str()"
            )
    return out


def as_items(x: Any) -> list[Any]:
    """One image/audio input or a list of them -> list.

    A list or tuple is a batch; a 4-D numpy array ``(N, H, W, C)`` is a batch of images; anything
    else (path, PIL image, one array) is a single item.
    """
    if isinstance(x, list | tuple):
        return list(x)
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return list(x)
    return [x]


def check_waveform(wave: Any, what: str = "audio") -> np.ndarray:
    """A decoded waveform as float32, refusing empty, non-finite or silent-by-type data."""
    arr = np.asarray(wave)
    if arr.dtype.kind not in "f":
        raise InputError(f"{what} decoded to dtype {arr.dtype}; expected float32 samples")
    if arr.size == 0:
        raise InputError(f"{what} is empty (0 samples); pass at least a few milliseconds of sound")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or infinite samples; clean or re-decode it")
    return arr.astype(np.float32, copy=False)


def max_pixels_or_default(max_pixels: Any) -> int:
    """The largest image ``width * height`` to accept: ``max_pixels``, or the default for None."""
    from ..preprocess.image import DEFAULT_MAX_PIXELS

    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels
