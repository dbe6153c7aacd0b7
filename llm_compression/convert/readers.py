"""Readers for Hugging Face checkpoint folders: safetensors (single or sharded) and pytorch_model.bin.

Tensors are read lazily, one at a time, as float32 numpy arrays, so a conversion holds about one
tensor in memory besides what the writer buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..families.maps import read_json

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)
_HASH_CHUNK = 1 << 22  # 4 MiB reads while hashing


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _to_numpy(tensor: Any) -> np.ndarray:
    """float tensors as float32; integer and bool buffers (position_ids) keep their dtype."""
    import torch

    if tensor.is_floating_point():
        tensor = tensor.detach().to(torch.float32)
    return tensor.detach().contiguous().numpy()


class HFWeights:
    """The tensors of a Hugging Face folder: ``shapes`` (name -> shape), ``load(name)``, ``files``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files: list[Path] = self._weight_files()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        for path in self.files:
            for name, shape in self._scan(path).items():
                self.shapes[name] = shape
                self._where[name] = path

    def _weight_files(self) -> list[Path]:
        folder = self.folder
        if (folder / SAFETENSORS).is_file():
            return [folder / SAFETENSORS]
        for index_name in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
            if (folder / index_name).is_file():
                return self._shards(folder / index_name)
        if (folder / TORCH_BIN).is_file():
            return [folder / TORCH_BIN]
        raise ConversionError(
            f"no weights in {folder}: looked for {', '.join(WEIGHT_FILES)}; point at the folder "
            "that save_pretrained wrote (it holds config.json and the weights)"
        )

    def _shards(self, index_path: Path) -> list[Path]:
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path} has no 'weight_map'; re-save the checkpoint")
        shards = [self.folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [p.name for p in shards if not p.is_file()]
        if absent:
            raise ConversionError(
                f"{index_path.name} lists shards that are not in {self.folder}: {absent}; "
                "copy every shard beside the index"
            )
        return shards

    def _scan(self, path: Path) -> dict[str, tuple[int, ...]]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise ConversionError(f"cannot read {path}: {e}; the file is damaged") from e
            self._open[path] = handle
            return {n: tuple(handle.get_slice(n).get_shape()) for n in handle.keys()}  # noqa: SIM118
        state = _torch_load(path)
        self._open[path] = state
        return {n: tuple(t.shape) for n, t in state.items()}

    def load(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a float32 numpy array (integer and bool buffers as they are)."""
        path = self._where[name]
        handle = self._open[path]
        if path.suffix == ".safetensors":
            return _to_numpy(handle.get_tensor(name))
        return _to_numpy(handle[name])

    @property
    def loader(self) -> Callable[[str], np.ndarray]:
        return self.load


def _torch_load(path: Path) -> dict[str, Any]:
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors come in many types
        raise ConversionError(
            f"cannot load {path} with torch.load(weights_only=True): {e}; the file is damaged or "
            "holds more than tensors (re-save it with save_pretrained(safe_serialization=True))"
        ) from e
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, expected a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if hasattr(v, "shape")}


class StateDictFile:
    """A bare PyTorch state dict file (``.pth``, ``.pt``), read with ``weights_only=True``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._state = _torch_load(self.path)
        self.shapes = {name: tuple(t.shape) for name, t in self._state.items()}

    def load(self, name: str) -> np.ndarray:
        return _to_numpy(self._state[name])


def is_torch_file(path: Path) -> bool:
    """True when ``path`` starts like ``torch.save`` output (a zip archive or a raw pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" or head[:1] == b"\x80"
