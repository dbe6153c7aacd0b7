"""Group-wise quantized matrices (docs/format.md, "Group-wise layouts"): int4 with a scale and an
offset per group of 32 inputs, int8 with a scale per group; GGUF Q4_0 / Q4_1 / Q8_0 blocks map onto
them without requantizing. numpy only.

- ``int4_group_asym``: ``w[r, c] = float32(d[r, g]) * q[r, c] + float32(m[r, g])`` with ``g = c // 32``,
  ``q`` in 0..15 packed two per byte (element ``2j`` in the low nibble of byte ``j``, ``2j + 1`` in
  the high nibble: ONNX Runtime's ``MatMulNBits`` layout), ``d`` and ``m`` float16.
- ``int8_group_sym``: ``w[r, c] = float32(d[r, g]) * q[r, c]``, ``q`` int8, ``d`` float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConversionError

GROUP = 32  # inputs per group: GGUF's block size, and ORT MatMulNBits' smallest fast block
QUANT_INT4_GROUP = "int4_group_asym"
QUANT_INT8_GROUP = "int8_group_sym"
GROUP_QUANT_TYPES = (QUANT_INT4_GROUP, QUANT_INT8_GROUP)
# GGUF block types that map onto a layout: ggml type id -> (name, bytes per block of 32)
GGUF_BLOCKS = {2: ("Q4_0", 18), 3: ("Q4_1", 20), 8: ("Q8_0", 34)}


@dataclass(frozen=True)
class GroupQuantized:
    """A quantized (rows, cols) matrix as stored: ``data`` (packed uint8 or int8), float16
    ``scales`` and (int4) ``offsets`` of shape (rows, cols // 32)."""

    quant_type: str
    shape: tuple[int, int]
    data: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        return 2

    def take_rows(self, index: np.ndarray) -> GroupQuantized:
        """The rows ``w[index]`` (a reordering, or a gather of some rows)."""
        offsets = None if self.offsets is None else self.offsets[index]
        shape = (len(index), self.shape[1])
        return GroupQuantized(self.quant_type, shape, self.data[index], self.scales[index], offsets)

    def unpacked(self) -> np.ndarray:
        """The integer matrix ``q`` (rows, cols): uint8 0..15 for int4, int8 for int8."""
        if self.quant_type == QUANT_INT8_GROUP:
            return self.data.reshape(self.shape)
        return unpack_int4(self.data).reshape(self.shape)

    def dequantize(self) -> np.ndarray:
        """float32 (rows, cols), with the float32 operations of ``gguf.quants`` (bit-exact)."""
        rows, cols = self.shape
        q = self.unpacked().reshape(rows, cols // GROUP, GROUP).astype(np.float32)
        w = q * self.scales.astype(np.float32)[..., None]
        if self.offsets is not None:
            w += self.offsets.astype(np.float32)[..., None]
        return w.reshape(rows, cols)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """(..., n) packed bytes -> (..., 2n) uint8 values, low nibble first."""
    return np.stack((packed & 0x0F, packed >> 4), axis=-1).reshape(*packed.shape[:-1], -1)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """(..., 2n) values 0..15 -> (..., n) bytes, element 2j in the low nibble."""
    q = q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def check_groupable(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[1] % GROUP:
        raise ConversionError(
            f"tensor {name!r} of shape {shape} cannot be quantized in groups of {GROUP}: it "
            f"needs 2 dimensions and a multiple of {GROUP} inputs; write it with dtype='int8'"
        )


def quantize_int4(name: str, w: np.ndarray) -> GroupQuantized:
    """Asymmetric int4 per group of 32 inputs: ``m = min``, ``d = (max - min) / 15`` (float16)."""
    check_groupable(name, w.shape)
    if not np.isfinite(w).all():
        raise ConversionError(
            f"tensor {name!r} has non-finite values and cannot be int4-quantized; fix the "
            "checkpoint or write with dtype='float16'"
        )
    rows, cols = w.shape
    g = np.asarray(w, np.float32).reshape(rows, cols // GROUP, GROUP)
    lo, hi = g.min(axis=-1), g.max(axis=-1)
    m = lo.astype(np.float16)
    d = ((hi - m.astype(np.float32)) / 15).astype(np.float16)
    d32 = d.astype(np.float32)[..., None]
    safe = np.where(d32 == 0, 1, d32)
    q = np.where(d32 == 0, 0, np.rint((g - m.astype(np.float32)[..., None]) / safe))
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(rows, cols)
    return GroupQuantized(QUANT_INT4_GROUP, (rows, cols), pack_int4(q), d, m)


def from_gguf_blocks(type_id: int, raw: np.ndarray, shape: tuple[int, int]) -> GroupQuantized:
    """A GGUF Q4_0 / Q4_1 / Q8_0 tensor's blocks (bytes) as a layout, values unchanged."""
    kind, size = GGUF_BLOCKS[type_id]
    rows, cols = shape
    blocks = np.ascontiguousarray(raw, np.uint8).reshape(rows, cols // GROUP, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    if kind == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8).reshape(rows, cols)
        return GroupQuantized(QUANT_INT8_GROUP, shape, q, d)
    start = 4 if kind == "Q4_1" else 2
    qs = blocks[..., start:]  # (rows, groups, 16): element j low nibble, j + 16 high nibble
    q = np.concatenate((qs & 0x0F, qs >> 4), axis=-1).reshape(rows, cols)
    if kind == "Q4_1":
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    else:  # Q4_0: d * (q - 8) == d * q + (-8 d), both exact in float32
        m = (-8 * d.astype(np.float32)).astype(np.float16)
        if not np.isfinite(m).all():
            raise ConversionError("a Q4_0 block scale overflows float16 times 8; keep it float")
    return GroupQuantized(QUANT_INT4_GROUP, shape, pack_int4(q), d, m)


def quantize_int8(name: str, w: np.ndarray) -> GroupQuantized:
    """Symmetric int8 per group of 32 inputs: ``d = max|w| / 127`` (float16), as GGUF Q8_0."""
    check_groupable(name, w.shape)
    rows, cols = w.shape
    g = np.asarray(w, np.float32).reshape(rows, cols // GROUP, GROUP)
    d = (np.abs(g).max(axis=-1) / 127).astype(np.float16)
    d32 = d.astype(np.float32)[..., None]
    q = np.rint(g / np.where(d32 == 0, 1, d32)).clip(-127, 127).astype(np.int8)
    return GroupQuantized(QUANT_INT8_GROUP, (rows, cols), q.reshape(rows, cols), d)


def from_channel_int8(q: np.ndarray, scales: np.ndarray) -> GroupQuantized:
    """An ``int8_sym_channel`` matrix as an int8 group layout (its row scale in every group,
    float32: the values are unchanged)."""
    rows, cols = q.shape
    d = np.repeat(np.asarray(scales, np.float32)[:, None], cols // GROUP, axis=1)
    return GroupQuantized(QUANT_INT8_GROUP, (rows, cols), q, d)
