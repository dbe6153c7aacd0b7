"""The text-embedding protocol and the result type of a batch embedded with ``on_error="skip"``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Anything that turns text into vectors: text-only code depends on this, not on a class.

    ``MultimodalEmbeddingProvider`` satisfies it, so it can replace any other text embedder.
    """

    @property
    def dimension(self) -> int:
        """Length of every vector ``encode`` returns."""
        ...

    def encode(self, text: str) -> np.ndarray:
        """One text -> float32 vector of shape ``(dimension,)``."""
        ...

    def encode_batch(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress: bool = False
    ) -> np.ndarray:
        """Texts -> float32 array of shape ``(len(texts), dimension)``."""
        ...


@dataclass(frozen=True)
class EmbeddingResult:
    """What a batch embedded with ``on_error="skip"`` returns.

    Attributes
    ----------
    vectors : np.ndarray
        float32 ``(len(indices), dim)``: one L2-normalised row per input that could be embedded.
    indices : tuple[int, ...]
        Position in the input of each row of ``vectors`` (increasing).
    errors : tuple[tuple[int, str], ...]
        ``(input position, reason)`` for every input that was skipped.

    Examples
    --------
    >>> res = provider.encode_image(["a.png", "missing.png"], on_error="skip")  # doctest: +SKIP
    >>> res.indices, res.errors  # doctest: +SKIP
    ((0,), ((1, 'image file not found: missing.png ...'),))
    """

    vectors: np.ndarray
    indices: tuple[int, ...]
    errors: tuple[tuple[int, str], ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no input was skipped."""
        return not self.errors

    def __len__(self) -> int:
        return len(self.indices)
