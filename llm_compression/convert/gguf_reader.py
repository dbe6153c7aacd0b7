"""Reader for GGUF files (llama.cpp) through the ``gguf`` package: metadata and dequantized tensors.

GGUF writes a matrix's shape in ggml order (innermost first); ``shapes`` here is numpy / PyTorch
order. Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with ``gguf.quants``, the
same routine transformers' GGUF loader uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError

MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    """True when ``path`` is a file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


class GGUFFile:
    """A GGUF file: ``metadata`` (key -> Python value), ``shapes``, ``load(name)``."""

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            self._reader = GGUFReader(str(self.path))
        except (ValueError, OSError) as e:
            raise ConversionError(f"cannot read GGUF file {self.path}: {e}; it is damaged") from e
        self.metadata: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            self.metadata[key] = field.contents()
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.shapes = {
            name: tuple(int(d) for d in reversed(t.shape)) for name, t in self._tensors.items()
        }

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ConversionError(
                f"{self.path} lacks the GGUF metadata key {key!r}; the file was written by a "
                "llama.cpp converter that does not record it: re-convert with a current llama.cpp"
            )
        return self.metadata[key]

    def load_kept(self, name: str) -> Any:
        """Tensor ``name`` as stored where a layout holds it without requantizing (Q4_0, Q4_1,
        Q8_0 matrices -> ``weightfile.GroupQuantized``), else dequantized like ``load``."""
        from ..weightfile.groupwise import GGUF_BLOCKS, from_gguf_blocks

        tensor = self._tensors[name]
        shape = self.shapes[name]
        if int(tensor.tensor_type) in GGUF_BLOCKS and len(shape) == 2:
            return from_gguf_blocks(int(tensor.tensor_type), np.asarray(tensor.data), shape)
        return self.load(name)

    def load(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to float32 in numpy / PyTorch shape order."""
        from gguf.quants import dequantize

        tensor = self._tensors[name]
        values = dequantize(tensor.data, tensor.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape(self.shapes[name])
