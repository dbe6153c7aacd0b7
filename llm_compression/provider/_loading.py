"""Model files for the provider: a family check reading only metadata, and a lazy, locked slot."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import ModelFileNotFoundError, WrongFamilyError
from ..families import REGISTRY

T = TypeVar("T")


def check_family(path: str | os.PathLike, *, role: str, expected: tuple[str, ...]) -> Any:
    """Read the metadata of the weight file at ``path`` and check its model family.

    Returns the ``WeightFileMetadata``; only the Parquet footer is read, no tensor.

    Raises
    ------
    ModelFileNotFoundError
        ``path`` does not exist.
    WrongFamilyError
        The file holds another family than ``expected``; the message names the file type ``role``
        expects and the argument the file belongs to.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise ModelFileNotFoundError(
            f"{role}: weight file not found: {p}; pass the path of a .parquet file written by "
            "`llm-compression convert`"
        )
    from ..weightfile import read_metadata

    meta = read_metadata(p)
    if meta.family not in expected:
        want = " or ".join(REGISTRY[f].describes for f in expected)
        got = REGISTRY.get(meta.family)
        got_kind = got.describes if got else f"family {meta.family!r}"
        got_arg = got.provider_argument if got else "none"
        raise WrongFamilyError(
            f"{role} expects {want} (family {' or '.join(map(repr, expected))}), but {p} is "
            f"{got_kind} (family {meta.family!r}); pass it as {got_arg} instead, or convert the "
            f"right checkpoint with `llm-compression convert`"
        )
    return meta


class LazySlot(Generic[T]):
    """Builds its value on first ``get()``, exactly once, even when threads race for it."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._value: T | None = None

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
                value = self._value
        return value
