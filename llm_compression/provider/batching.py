"""The one batching loop of the embedding path: validation, progress, on_error, order, normalisation.

Each input is prepared (tokenized, decoded, resized, resampled) on its own, so a bad one is
reported with its position; the good ones go to the model ``batch_size`` at a time. Variable-length
inputs (token rows) are sorted by length across the whole call so each batch pads little, then the
rows are put back in input order. Fixed-size inputs (images, 30 s audio windows) keep input order
and are decoded one batch at a time, so memory holds at most one batch of them.
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
from .similarity import l2_normalize

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
    embed: Callable[[list[Any]], Any],
    dim: int,
    batch_size: int = 32,
    show_progress: bool = False,
    on_error: OnError = "raise",
    desc: str = "embedding",
    length: Callable[[Any], int] | None = None,
    normalize: bool = False,
) -> EmbeddingResult:
    """Prepare and embed ``items`` in batches of ``batch_size``: the one batching loop.

    Parameters
    ----------
    items : sequence
        Raw inputs (paths, arrays, PIL images, token rows).
    prepare : callable
        One raw input -> what ``embed`` takes; raises an ``LLMCompressionError`` for a bad input.
    embed : callable
        A list of prepared inputs (at most ``batch_size``) -> ``(len, dim)`` array or tensor.
    dim : int
        Embedding dimension (shape of the empty result).
    batch_size, show_progress, on_error
        Batch size handed to the model; a tqdm bar on stderr; ``"raise"`` stops at the first bad
        input (its position is in the message), ``"skip"`` records it and goes on.
    length : callable, optional
        Prepared input -> its length. Given, every input is prepared first and the batches are
        cut from all inputs sorted by length, longest first (as sentence-transformers does), so
        each batch pads to similar lengths; the rows come back in input order. Without it inputs
        are prepared one batch at a time (at most one batch of decoded images in memory).
    normalize : bool
        L2-normalise the rows (the only place the embedding path normalises).

    Returns
    -------
    EmbeddingResult
        float32 vectors of the embedded inputs in input order, their positions, and
        ``(position, reason)`` per skipped one.
    """
    check_options(batch_size, on_error)
    step = int(batch_size)
    errors: list[tuple[int, str]] = []

    def prepared(positions: Sequence[int]) -> list[tuple[int, Any]]:
        out = []
        for index in positions:
            try:
                out.append((index, prepare(items[index])))
            except LLMCompressionError as e:
                if on_error == "raise":
                    raise relabel(e, index) from e
                errors.append((index, str(e)))
        return out

    if length is None:  # input order, prepared batch by batch; each counts its whole span
        ends = [(s, min(s + step, len(items))) for s in range(0, len(items), step)]
        batches = ((end - s, prepared(range(s, end))) for s, end in ends)
    else:  # whole call prepared first, sorted by length (stable: ties keep input order)
        ready = sorted(prepared(range(len(items))), key=lambda pair: -length(pair[1]))
        batches = ((len(b), b) for b in (ready[s : s + step] for s in range(0, len(ready), step)))
    rows: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not show_progress, file=sys.stderr)
    with bar:
        bar.update(len(errors))  # inputs refused while preparing the whole call (sorted mode)
        for span, batch in batches:
            if batch:
                out = _as_float32(embed([x for _, x in batch])).reshape(len(batch), -1)
                rows.update(zip((i for i, _ in batch), out, strict=True))
            bar.update(span)
    if errors:
        listing = "; ".join(f"[{i}] {reason}" for i, reason in sorted(errors))
        logger.warning("skipped %d of %d inputs: %s", len(errors), len(items), listing)
    kept = sorted(rows)
    matrix = np.stack([rows[i] for i in kept]) if kept else np.zeros((0, dim), np.float32)
    if normalize:
        matrix = l2_normalize(matrix)
    return EmbeddingResult(vectors=matrix, indices=tuple(kept), errors=tuple(sorted(errors)))


def _as_float32(x: Any) -> np.ndarray:
    """A model output (torch tensor or array) as a float32 numpy array."""
    if hasattr(x, "detach"):  # a torch tensor; torch is not imported for numpy-only callers
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
