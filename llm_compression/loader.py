"""WeightLoader: Parquet weight file -> torch tensors -> model.

Each tensor is one row group, decoded on its own by ``weightfile.decode_tensor`` (which picks the fastest
path: the streamed C join, Arrow + the C join, or numpy): ``get_layer`` reads just that row group and
``load_weights`` decodes row groups on a thread pool (zstd, the xxh3 checksum, the C loop and numpy's
copies release the GIL). The loader only wraps the arrays as torch tensors (``torch.from_numpy``, no
copy: a float32 row is the array its zstd frame was decompressed into) and moves them to the device.

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
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import TransformerConfig
from .errors import ConfigError, CorruptFileError, FormatError, InputError, MissingTensorError
from .weightfile import TensorInfo, WeightFile, WeightFileMetadata, decode_tensor, is_unused

if TYPE_CHECKING:
    import torch

# torch, the families and core are imported where used: load_model(backend="onnxruntime")
# reaches ONNX Runtime without importing torch (decision 0010).

log = logging.getLogger(__name__)


def _to_torch(array: np.ndarray, info: TensorInfo) -> torch.Tensor:
    """A tensor sharing ``array``'s memory; bfloat16 bits (uint16) become torch.bfloat16."""
    import torch

    if array.dtype == np.uint16 and info.dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _as_tensor(buffer, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor viewing ``buffer`` (no copy); the tensor holds a reference to the buffer."""
    import torch

    if buffer.size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).view(shape)


def _usable_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` once a tensor can be made there (cuda: a CUDA build and a GPU)."""
    import torch

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
    """Reads tensors from a weight file written by ``llm_compression.weightfile.write_model``.

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
        from .families import config_from_dict

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

    def check_fits(self, module: torch.nn.Module) -> None:
        """Before any tensor is decoded: the file holds exactly ``module``'s tensors, in its shapes.

        ``module`` is built from this file's own ``.config`` (on the meta device: no memory), so a
        difference means the stored config and tensors disagree. Raises MissingTensorError for
        missing or unexpected names, CorruptFileError for a shape that differs.
        """
        expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        stored = {n: self._file.tensors[n] for n in self.tensor_names}
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

    @property
    def metadata(self) -> WeightFileMetadata:
        return self._file.metadata

    @property
    def config(self) -> Any:
        return self._config

    @property
    def tensor_names(self) -> list[str]:
        """Canonical names (the model's tensors) in file order."""
        return [name for name in self._file.tensors if not is_unused(name)]

    @property
    def unused_names(self) -> list[str]:
        """Rows holding source tensors the model does not use (``unused/<format>/<upstream name>``,
        docs/format.md): kept so the file is a faithful copy, read only when asked for by name."""
        return [name for name in self._file.tensors if is_unused(name)]

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
        array = decode_tensor(self._file, info, upcast=self.force_float32, verify=self.verify)
        tensor = _to_torch(array, info)
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
        import torch

        q, scales = self._file.read_int8(info, verify=self.verify)
        return _as_tensor(q, torch.int8, info.shape).to(self.device), _as_tensor(
            scales, torch.float32, (info.shape[0],)
        ).to(self.device)

    def load_weights(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors by name (by default every canonical tensor, not the unused source tensors),
        decoded in parallel, in file order."""
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


def load_weights_into(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], *, dtype=None
) -> torch.nn.Module:
    """Assign canonical-name ``weights`` to ``model`` (strict), cast to ``dtype``; inference mode.

    Unused source tensors (``unused/...`` rows) among ``weights`` are skipped."""
    weights = {k: v for k, v in weights.items() if not is_unused(k)}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise MissingTensorError(
            f"weights do not fit {type(model).__name__}: missing {missing[:8]} "
            f"({len(missing)} in all), unexpected {unexpected[:8]} ({len(unexpected)} in all); "
            "was the file converted for this model family and config?"
        )
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:  # size mismatches
        raise ConfigError(f"weights do not fit {type(model).__name__}: {e}") from e
    model.eval()
    model.requires_grad_(False)
    return model


def _load_converting(loader: WeightLoader, model: torch.nn.Module, mode: str) -> None:
    """Everything but the linear layers at once, then each linear layer decoded and converted in
    turn (``apply_compute(fill=...)``): loading peaks near the compute-dtype bytes, not float32's."""
    from .core.compute import apply_compute, linear_names

    linear = set(linear_names(model))
    rest = [n for n in loader.tensor_names if n not in linear]
    result = model.load_state_dict(loader.load_weights(rest), assign=True, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != linear:  # check_fits ran before
        raise MissingTensorError(f"{loader.path} does not fit {type(model).__name__}")
    apply_compute(model, mode, fill=loader.load_weights)
    model.eval()
    model.requires_grad_(False)


def _quantized_generation(path: str | os.PathLike, dtype: Any) -> bool:
    """int4, or int8 for a family that generates: computed from quantized weights on ORT."""
    if not isinstance(dtype, str) or dtype.lower() not in ("int8", "int4"):
        return False
    return dtype.lower() == "int4" or _generates(path)


def _generates(path: str | os.PathLike) -> bool:
    from .families import family
    from .weightfile import read_metadata

    return "generate" in family(read_metadata(path).family).tasks


def _graph_dtype(dtype: Any) -> str:
    """The decoder graph's dtype named by ``dtype``: float32 (default), int8 or int4."""
    if isinstance(dtype, str) and dtype.strip().lower() == "int4":
        return "int4"
    from .core.compute import parse_dtype

    mode = parse_dtype(dtype)
    if mode not in ("float32", "int8"):
        raise ConfigError(
            f"backend='onnxruntime' runs a causal LM in float32, int8 or int4, got dtype={dtype!r}; "
            "use backend='torch' for bfloat16 / float16"
        )
    return mode


def _load_quantized(path, dtype: str, device, kernel: str = "native") -> torch.nn.Module:
    import torch

    from .core.malloc import release_freed_memory
    from .families.quantized import load_quantized
    from .preprocess.text import Tokenizer

    if torch.device(device).type != "cpu":
        raise ConfigError(f"dtype={dtype!r} computes on the CPU; pass device='cpu'")
    start = time.perf_counter()
    file = WeightFile(path)  # opened once: the footer holds the tokenizer too (13-45 ms a read)
    model = load_quantized(file, dtype.lower(), kernel=kernel)
    model.tokenizer = Tokenizer.from_files(dict(file.metadata.files))
    release_freed_memory()  # parsing tokenizer.json left ~26 MB freed but resident (SmolLM2)
    log.info("loaded %s (%s) from %s in %.3f s", type(model).__name__, dtype, path,
             time.perf_counter() - start)  # fmt: skip
    return model


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device="cpu",
    backend: str = "torch",
):
    """Build the model stored in a weight file: CLIP, Whisper, SentenceEncoder or CausalLM.

    The class is picked from the family recorded in the file; the model is built on the meta
    device, the weights are assigned (strict), and the file's tokenizer is attached as
    ``model.tokenizer``.

    Parameters
    ----------
    path : a weight file written by ``llm_compression.weightfile.write_model``.
    dtype : compute mode, a string or torch dtype (``core.compute.parse_dtype``): "float32"
        (default, exact; a causal LM's generation steps run in our C kernel over its own
        weights where the CPU has AVX512, decision 0018), "bfloat16" (linear layers in bfloat16), "int8" (linear layers in
        dynamic int8, weights per output channel; a BERT body and a causal LM's decoder compute
        from their int8 weights in our C kernel where the CPU has AVX512-VNNI, decisions 0016
        and 0015, else torch's int8 layers and ONNX Runtime's MatMulNBits,
        families/quantized.py), "int4" (causal LMs only),
        "float16" (the whole model cast).
    device : torch device for the weights.
    backend : "torch" (default: our modules, exact) or "onnxruntime": the embedding families'
        encoders (bert, clip, whisper, mobilenet_v2) on ONNX Runtime, float32 or int8, weights
        fed from the file's rows, no torch imported (``onnxrt.OrtModel``, decision 0010); a
        causal LM's whole decoder as one ONNX Runtime graph, float32 too (float32 / int8 /
        int4, ``core.decoder_graph``, decision 0011; int8 / int4 without it: our C kernel).
    """
    from .onnxrt import OrtModel, parse_backend

    if parse_backend(backend) == "onnxruntime":
        if str(device) != "cpu":
            raise ConfigError(f"backend='onnxruntime' runs on the CPU; got device={device!r}")
        from .onnxrt.graphs import EXPORTABLE

        file = WeightFile(path)  # opened once: OrtModel reads this footer, not its own
        if file.metadata.family in EXPORTABLE:  # the embedding families, no torch (0010)
            return OrtModel(file, dtype=dtype)
        return _load_quantized(path, _graph_dtype(dtype), device, "onnxruntime")  # graph, 0011
    from .core.malloc import reuse_freed_memory

    model = _load_torch(path, dtype, device)
    reuse_freed_memory()  # after loading: activations reuse pages instead of faulting them in
    return model


def _load_torch(path: str | os.PathLike, dtype: Any, device: Any):
    from .core.compute import apply_compute, parse_dtype
    from .core.malloc import release_freed_memory, system_memory_pool
    from .families import build_model, family
    from .preprocess.text import Tokenizer

    if _quantized_generation(path, dtype):
        return _load_quantized(path, dtype, device)
    mode = parse_dtype(dtype)
    start = time.perf_counter()
    loader = WeightLoader(path, device=device)
    loader.check_layer_count()
    model = build_model(loader.config)
    loader.check_fits(model)  # shapes against the config before decoding anything
    if mode in ("bfloat16", "int8"):
        _load_converting(loader, model, mode)
    else:  # float32 (packed for oneDNN layer by layer) reads through malloc, which the packs reuse
        with system_memory_pool():
            load_weights_into(model, loader.load_weights())
        apply_compute(model, mode)
    if family(loader.config.family).tokenizer:
        model.tokenizer = Tokenizer.from_files(dict(loader.metadata.files))
    release_freed_memory()  # the read and conversion buffers Arrow's pool and glibc keep
    log.info("loaded %s from %s in %.3f s", type(model).__name__, path, time.perf_counter() - start)
    return model
