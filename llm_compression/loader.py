"""WeightLoader: Parquet weight file -> torch tensors -> model.

Each tensor is one row group, decoded on its own: ``get_layer`` reads just that row group and
``load_weights`` decodes row groups on a thread pool (pyarrow's zstd decode, the xxh3 checksum, the C
join + upcast loop and numpy's copies all release the GIL). Float32 rows become tensors with ``torch.frombuffer`` on the
decoded Arrow buffer (no copy; the tensor keeps the buffer alive). float16 and bfloat16 rows are
stored byte-stream-split (docs/format.md): they are joined and, with ``force_float32``, upcast in one
pass (store/_unsplit.c; numpy + torch over cache-sized chunks without it) into a fresh float32 array; int8 rows are dequantized in one pass
(``q * scale`` per output row). ``torch.from_numpy`` wraps the results without copying.

Example
-------
>>> loader = WeightLoader("minilm.parquet")  # doctest: +SKIP
>>> loader.get_layer("embed.token.weight").shape  # doctest: +SKIP
torch.Size([30522, 384])
>>> q, scales = WeightLoader("m.int8.parquet").get_quantized("layers.0.attn.q.weight")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig, TransformerConfig, config_from_dict
from .errors import ConfigError, CorruptFileError, FormatError, InputError, MissingTensorError
from .store import TensorInfo, WeightFile, WeightFileMetadata
from .store import format as _format
from .store.format import ENCODING_BYTE_STREAM_SPLIT

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


# Elements joined and upcast per step. Equal to torch's internal GRAIN_SIZE (32768): a copy_ of at
# most that many elements runs on the calling decode thread, never on an OpenMP team (one team per
# calling thread would oversubscribe the cores), and 64 KiB of scratch plus source stays in L2.
_CHUNK = 1 << 15


def _join_split(data, dtype: str, shape: tuple[int, ...], force_float32: bool) -> torch.Tensor:
    """A tensor from byte-stream-split 2-byte floats: low bytes then high bytes of every element.

    With the C extension (store/_unsplit.c) one pass reads both byte streams and writes the output.
    Without it, per chunk: numpy joins the two streams into uint16 scratch (shift, or) and torch's
    vectorized float16/bfloat16 -> float32 copy writes the output (numpy's float16 cast is 2x
    slower). Either way the output is numpy memory (numpy asks for transparent huge pages: writes to
    fresh memory ran 1.6x faster here than into torch.empty). Without ``force_float32`` the stored
    dtype is returned.
    """
    n = int(np.prod(shape, dtype=np.int64))
    stored = _TORCH_DTYPES[dtype]
    decoder = _format.native_split_decoder(dtype, force_float32, n)
    if decoder is not None:
        loop, out = decoder
        loop(*np.frombuffer(data, np.uint8).reshape(2, n), out)
        tensor = torch.from_numpy(out)
        return (tensor if force_float32 else tensor.view(stored)).view(shape)
    return _join_split_numpy(data, n, stored, force_float32).view(shape)


def _join_split_numpy(data, n: int, stored: torch.dtype, force_float32: bool) -> torch.Tensor:
    low, high = np.frombuffer(data, np.uint8).reshape(2, n)
    if not force_float32:
        bits = np.left_shift(high, 8, dtype=np.uint16)
        np.bitwise_or(bits, low, out=bits)
        return torch.from_numpy(bits.view(np.int16)).view(stored)
    out = np.empty(n, np.float32)
    scratch = np.empty(min(n, _CHUNK), np.uint16)
    source, target = torch.from_numpy(scratch.view(np.int16)).view(stored), torch.from_numpy(out)
    # One C++ call makes every output view; a Python slice per chunk cost ~2 us more each.
    for chunk, start in zip(target.split(_CHUNK), range(0, n, _CHUNK), strict=True):
        stop = start + len(chunk)
        bits = scratch[: stop - start]
        np.left_shift(high[start:stop], 8, out=bits, dtype=np.uint16)
        np.bitwise_or(bits, low[start:stop], out=bits)
        chunk.copy_(source[: stop - start])
    return target


# float32 from plain (not split) stored bytes in one pass each, in numpy: these run on the decode
# threads, where torch's OpenMP teams (one per calling thread) oversubscribe the cores.
def _float16(data, shape) -> np.ndarray:
    return np.frombuffer(data, np.float16).astype(np.float32).reshape(shape)


def _bfloat16(data, shape) -> np.ndarray:
    bits = np.frombuffer(data, np.uint16)
    out = np.empty(bits.shape, np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)  # bfloat16 bits are float32's upper half
    return out.view(np.float32).reshape(shape)


def _dequantize(data, scales, shape) -> np.ndarray:
    rows = np.frombuffer(scales, np.float32).reshape(-1, 1)  # int8_sym_channel: one per row
    return np.multiply(np.frombuffer(data, np.int8).reshape(shape), rows, dtype=np.float32)


_UPCAST = {"float16": _float16, "bfloat16": _bfloat16}


def _as_tensor(buffer, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor viewing ``buffer`` (no copy); the tensor holds a reference to the buffer."""
    if buffer.size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).view(shape)


def _usable_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` once a tensor can be made there (cuda: a CUDA build and a GPU)."""
    try:
        parsed = torch.device(device)
        torch.empty(0, device=parsed)
    except (RuntimeError, TypeError, AssertionError) as e:  # torch asserts "not compiled with CUDA"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"device={device!r} cannot be used here ({reason}); pass device='cpu', or install a "
            "torch build for that device"
        ) from e
    return parsed


class WeightLoader:
    """Reads tensors from a weight file written by ``llm_compression.store.write_model``.

    Parameters
    ----------
    path : the .parquet weight file.
    force_float32 : True (default) returns float32: float16/bfloat16 upcast exactly, int8 rows
        dequantized (``q * scale``). False returns the stored dtype bit-exactly (int8 rows come back
        as int8; their scales via ``get_quantized``).
    device : torch device the tensors are moved to.
    verify : check each tensor's checksum as it is decoded.
    num_threads : decode threads for ``load_weights`` (default: all cores).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        force_float32: bool = True,
        device: str | torch.device = "cpu",
        verify: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self._file = WeightFile(path)
        self.path: Path = self._file.path
        self.force_float32 = force_float32
        self.device = _usable_device(device)
        self.verify = verify
        self.num_threads = num_threads or os.cpu_count() or 1
        try:
            self._config = config_from_dict(self.metadata.config)
        except ConfigError as e:
            raise FormatError(f"{self.path}: the stored model config cannot be rebuilt: {e}") from e

    def check_layer_count(self) -> None:
        """Before building the model of ``.config``: every layer holds tensors, so a config with
        more layers than the file has tensors was edited; refused here, as building 1e12 layers
        would exhaust memory even on the meta device. Raises CorruptFileError."""
        fields = (getattr(self._config, f.name) for f in dataclasses.fields(self._config))
        layers = sum(v.n_layers for v in fields if isinstance(v, TransformerConfig))
        if layers > len(self._file.tensors):
            raise CorruptFileError(
                f"{self.path}: the stored config has {layers} layers but the file holds only "
                f"{len(self._file.tensors)} tensors; the config was edited: re-convert the model"
            )

    @property
    def metadata(self) -> WeightFileMetadata:
        return self._file.metadata

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def tensor_names(self) -> list[str]:
        """Canonical names in file order."""
        return list(self._file.tensors)

    def info(self, name: str) -> TensorInfo:
        """Shape, stored dtype and quantization of ``name`` (no data decoded)."""
        try:
            return self._file.tensors[name]
        except KeyError:
            raise self._missing([name]) from None

    def _missing(self, names: Iterable[str]) -> MissingTensorError:
        lines = []
        for name in names:
            close = difflib.get_close_matches(name, self._file.tensors, n=5, cutoff=0.6)
            lines.append(f"{name!r} (close names: {close})" if close else repr(name))
        return MissingTensorError(
            f"{self.path} has no tensor {', '.join(lines)}; it holds {len(self._file.tensors)} "
            "tensors: list them with `llm-compression inspect FILE`"
        )

    def _decode(self, info: TensorInfo) -> torch.Tensor:
        fast = self._file.read_split(info, upcast=self.force_float32, verify=self.verify)
        if fast is not None:
            tensor = torch.from_numpy(fast)
            tensor = tensor if self.force_float32 else tensor.view(_TORCH_DTYPES[info.dtype])
            return tensor.view(info.shape).to(self.device)
        data, scales = self._file.read(info, verify=self.verify, raw=True)
        if info.encoding == ENCODING_BYTE_STREAM_SPLIT and info.n_params:
            tensor = _join_split(data, info.dtype, info.shape, self.force_float32)
        elif self.force_float32 and info.n_params and info.quant_type is not None:
            tensor = torch.from_numpy(_dequantize(data, scales, info.shape))
        elif self.force_float32 and info.n_params and info.dtype in _UPCAST:
            tensor = torch.from_numpy(_UPCAST[info.dtype](data, info.shape))
        else:
            tensor = _as_tensor(data, _TORCH_DTYPES[info.dtype], info.shape)
        return tensor.to(self.device) if self.device.type != "cpu" else tensor

    def get_layer(self, name: str) -> torch.Tensor:
        """One tensor, decoding only its row group."""
        return self._decode(self.info(name))

    def get_quantized(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored int8 matrix ``q`` (out, in) and float32 ``scales`` (out,): ``w ~= q * scales[:, None]``."""
        info = self.info(name)
        if info.quant_type is None:
            raise InputError(
                f"{self.path}: tensor {name!r} is stored as {info.dtype}, not quantized; "
                "read it with get_layer(name)"
            )
        data, scales = self._file.read(info, verify=self.verify)
        q = _as_tensor(data, torch.int8, info.shape)
        return q.to(self.device), _as_tensor(scales, torch.float32, (info.shape[0],)).to(
            self.device
        )

    def load_weights(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors by name (all of them by default), decoded in parallel, in file order."""
        wanted = self.tensor_names if names is None else list(names)
        missing = [n for n in wanted if n not in self._file.tensors]
        if missing:
            raise self._missing(missing)
        infos = sorted((self._file.tensors[n] for n in wanted), key=lambda i: -i.stored_bytes)
        if self.num_threads <= 1 or len(infos) <= 1:
            decoded = {i.name: self._decode(i) for i in infos}
        else:
            with ThreadPoolExecutor(min(self.num_threads, len(infos))) as pool:
                decoded = dict(
                    zip((i.name for i in infos), pool.map(self._decode, infos), strict=True)
                )
        return {n: decoded[n] for n in wanted}

    def check_fits(self, module: torch.nn.Module) -> None:
        """Before any tensor is decoded: the file holds exactly ``module``'s tensors, in its shapes.

        ``module`` is built from this file's own ``.config`` (on the meta device: no memory), so a
        difference means the stored config and tensors disagree. Raises MissingTensorError for
        missing or unexpected names, CorruptFileError for a shape that differs.
        """
        expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        stored = self._file.tensors
        missing, unexpected = sorted(expected.keys() - stored), sorted(stored.keys() - expected)
        if missing or unexpected:
            raise MissingTensorError(
                f"{self.path} does not fit the {type(module).__name__} its config builds: missing "
                f"{missing[:8]} ({len(missing)} in all), unexpected {unexpected[:8]} "
                f"({len(unexpected)} in all); the file was edited or damaged: re-convert the model"
            )
        wrong = [n for n, shape in expected.items() if stored[n].shape != shape]
        if wrong:
            shown = ", ".join(
                f"{n!r} {stored[n].shape} (expected {expected[n]})" for n in wrong[:4]
            )
            raise CorruptFileError(
                f"{self.path}: the stored config does not fit the stored tensors: {shown} "
                f"({len(wrong)} in all); the config or the tensors were edited: re-convert it"
            )

    def load_into(
        self, module: torch.nn.Module, *, strict: bool = True
    ) -> tuple[list[str], list[str]]:
        """Load every tensor into ``module`` with ``load_state_dict(assign=True)``.

        Builds nothing twice: a module made on the meta device takes the decoded tensors as its
        parameters. Returns ``(missing_keys, unexpected_keys)``; with ``strict`` either being
        non-empty raises MissingTensorError listing both.
        """
        try:
            result = module.load_state_dict(self.load_weights(), assign=True, strict=False)
        except RuntimeError as e:  # size mismatches
            raise ConfigError(
                f"{self.path} does not fit {type(module).__name__}: {e}; build the module from "
                "this loader's .config"
            ) from e
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise MissingTensorError(
                f"{self.path} does not match {type(module).__name__}: missing {missing} (the module "
                f"needs them, the file lacks them), unexpected {unexpected} (in the file, not in "
                "the module); re-convert the model or pass strict=False to get both lists"
            )
        return missing, unexpected
