"""Batched embedding with a progress bar and per-item error handling, shared by every modality.

Inputs are consumed in chunks of ``batch_size``: each item of a chunk is prepared (decoded, resized,
resampled) on its own, so a bad item is reported with its position; the good ones of the chunk go to
the model together as one batch. Only one chunk of decoded inputs is in memory at a time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, LLMCompressionError
from .protocol import EmbeddingResult

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES = ("raise", "skip")


def check_options(batch_size: Any, on_error: Any = "raise") -> None:
    """Raise ``InputError`` unless ``batch_size`` is a positive int and ``on_error`` is known."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if on_error not in ON_ERROR_CHOICES:
        raise InputError(f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {on_error!r}")


def relabel(error: LLMCompressionError, index: int) -> LLMCompressionError:
    """The same error type with the failing input's position in front of the message."""
    try:
        return type(error)(f"input {index}: {error}")
    except TypeError:  # an error class with a different constructor: keep it as it is
        return error


def embed_in_batches(
    items: Sequence[Any],
    *,
    prepare: Callable[[Any], Any],
    embed: Callable[[list[Any]], np.ndarray],
    dim: int,
    batch_size: int = 32,
    show_progress: bool = False,
    on_error: OnError = "raise",
    desc: str = "embedding",
) -> EmbeddingResult:
    """Prepare and embed ``items`` in chunks of ``batch_size``.

    Parameters
    ----------
    items : sequence
        Raw inputs (paths, arrays, PIL images, texts).
    prepare : callable
        One raw input -> what ``embed`` takes; raises an ``LLMCompressionError`` for a bad input.
    embed : callable
        A list of prepared inputs (at most ``batch_size``) -> float32 ``(len, dim)`` array.
    dim : int
        Embedding dimension (shape of the empty result).
    batch_size, show_progress, on_error
        Chunk size handed to the model; a tqdm bar on stderr; ``"raise"`` stops at the first bad
        input (its position is in the message), ``"skip"`` records it and goes on.

    Returns
    -------
    EmbeddingResult
        Vectors of the embedded inputs, their positions, and ``(position, reason)`` per skipped one.
    """
    check_options(batch_size, on_error)
    vectors: list[np.ndarray] = []
    kept: list[int] = []
    errors: list[tuple[int, str]] = []
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not show_progress, file=sys.stderr)
    with bar:
        for start in range(0, len(items), int(batch_size)):
            prepared, positions = [], []
            for index in range(start, min(start + int(batch_size), len(items))):
                try:
                    prepared.append(prepare(items[index]))
                    positions.append(index)
                except LLMCompressionError as e:
                    if on_error == "raise":
                        raise relabel(e, index) from e
                    errors.append((index, str(e)))
            if prepared:
                out = np.asarray(embed(prepared), dtype=np.float32)
                vectors.append(out.reshape(len(prepared), -1))
                kept.extend(positions)
            bar.update(min(int(batch_size), len(items) - start))
    if errors:
        listing = "; ".join(f"[{i}] {reason}" for i, reason in errors)
        logger.warning("skipped %d of %d inputs: %s", len(errors), len(items), listing)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    return EmbeddingResult(vectors=matrix, indices=tuple(kept), errors=tuple(errors))
