"""Reader for CTranslate2 ``model.bin`` files (binary version 4 and later).

Layout, little-endian: u32 binary version; u16-length-prefixed spec name and u32 spec revision;
u32 variable count; per variable a u16-length name, u8 rank, rank x u32 dims, u8 dtype code,
u32 byte count and the raw bytes; then u32 alias count and (alias, target) string pairs.
Strings are NUL-terminated inside their length. The file is memory-mapped; a variable is copied
(and upcast to float32) only when loaded.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from ..errors import ConversionError

MIN_VERSION = 4  # the first version with a per-variable dtype code
# CTranslate2's DataType enum: the code written before each variable's bytes.
DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bfloat16"}
SCALE_SUFFIX = "_scale"  # int8/int16 weights: ".../weight" with ".../weight_scale" per row


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ConversionError(
                f"{self.path} ends at byte {len(self.buf)} but the header needs {self.pos + n}; "
                "the file is truncated (for a split package, join every part in order)"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        return raw.rstrip(b"\0").decode("utf-8")


def peek_spec(path: Path) -> str | None:
    """The spec name ("WhisperSpec") of a CTranslate2 model.bin, or None if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 2 + 256)
    except OSError:
        return None
    if len(head) < 8:
        return None
    version = struct.unpack("<I", head[:4])[0]
    if not MIN_VERSION <= version <= 255:
        return None
    length = struct.unpack("<H", head[4:6])[0]
    raw = head[6 : 6 + length]
    if length == 0 or len(raw) < length or not raw.rstrip(b"\0").isascii():
        return None
    name = raw.rstrip(b"\0").decode("ascii")
    return name if name.isidentifier() else None


class CT2Model:
    """Variables of a CTranslate2 model.bin: ``spec``, ``shapes``, ``load(name)``, ``scalar(name)``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        cur = _Cursor(self._buf, self.path)
        self.version = cur.unpack("I")
        if self.version < MIN_VERSION:
            raise ConversionError(
                f"{self.path} is CTranslate2 binary version {self.version}; this reader needs "
                f"version >= {MIN_VERSION}: re-convert it with ctranslate2 >= 3.0"
            )
        self.spec = cur.string()
        self.revision = cur.unpack("I")
        self._vars: dict[str, tuple[tuple[int, ...], str, int, int]] = {}
        for _ in range(cur.unpack("I")):
            name = cur.string()
            dims = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
            code = cur.unpack("B")
            nbytes = cur.unpack("I")
            if code not in DTYPES:
                raise ConversionError(f"{self.path}: variable {name} has unknown dtype code {code}")
            self._vars[name] = (dims, DTYPES[code], cur.pos, nbytes)
            cur.take(nbytes)
        self.aliases = {cur.string(): cur.string() for _ in range(cur.unpack("I"))}
        self.shapes = {
            n: v[0] for n, v in self._vars.items() if not n.endswith("weight" + SCALE_SUFFIX)
        }

    def _raw(self, name: str) -> np.ndarray:
        dims, dtype, offset, nbytes = self._vars[name]
        if dtype == "bfloat16":
            bits = np.frombuffer(self._buf, "<u2", nbytes // 2, offset).astype(np.uint32)
            return (bits << 16).view(np.float32).reshape(dims)
        count = nbytes // np.dtype(dtype).itemsize
        if count != int(np.prod(dims, dtype=np.int64)):
            raise ConversionError(
                f"{self.path}: variable {name} has {count} values for shape {dims}; damaged file"
            )
        return np.frombuffer(self._buf, dtype, count, offset).reshape(dims)

    def load(self, name: str) -> np.ndarray:
        """Variable ``name`` as float32; int8/int16 weights are divided by their row scales, other
        integer variables keep their dtype."""
        raw = self._raw(name)
        scale_name = name + SCALE_SUFFIX
        if raw.dtype.kind == "i" and scale_name in self._vars:
            scale = self._raw(scale_name).astype(np.float32)
            scale = scale.reshape(-1, *([1] * (raw.ndim - 1))) if scale.ndim else scale
            return raw.astype(np.float32) / scale
        if (
            raw.dtype.kind in "iub"
        ):  # config scalars and index tables (alignment_heads) stay integers
            return raw.copy()
        return raw.astype(np.float32)

    def scalar(self, name: str, default: int | None = None) -> int | None:
        """An integer config variable stored in the file (``encoder/num_heads``)."""
        if name not in self._vars:
            return default
        return int(self._raw(name).reshape(-1)[0])
