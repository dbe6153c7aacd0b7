"""Client inputs as bytes: base64 data URLs and uploads decoded in memory, never server paths.

Images become PIL images (the pixel count checked from the header before decoding, as the
provider does for files); audio becomes float32 samples and their rate (soundfile: wav, flac,
ogg, mp3).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import numpy as np

from ..errors import InputError

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,",
                      re.ASCII)  # fmt: skip
MAX_PIXELS = 40_000_000  # 40 MP: far above any photo a page or client sends, far below a bomb


def decode_data_url(url: Any, kind: str) -> bytes:
    """The bytes of a ``data:<mime>;base64,<payload>`` URL (an ``InputError`` otherwise)."""
    if not isinstance(url, str):
        raise InputError(f"{kind} input must be a base64 data URL string, got {type(url).__name__}")
    match = DATA_URL.match(url[:256])
    if match is None or not match.group("b64"):
        raise InputError(
            f"{kind} input must be a data URL such as 'data:{kind}/...;base64,<bytes>' "
            f"(clients send the file's bytes; server-side paths and http URLs are not accepted)"
        )
    try:
        return base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"the {kind} data URL's payload is not valid base64: {e}") from e


def image_from_bytes(data: bytes) -> Any:
    """A decoded RGB-able PIL image, its size checked before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise InputError(
                f"the image is {img.width}x{img.height} = {img.width * img.height} pixels, "
                f"more than this server's limit of {MAX_PIXELS}; send a smaller image"
            )
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot decode the image ({len(data)} bytes): {e}") from e
    return img


def audio_from_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """``(samples, rate)``: float32 ``(samples,)`` or ``(channels, samples)``."""
    import soundfile as sf

    if not data:
        raise InputError("the audio is empty (0 bytes)")
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise InputError(
            f"cannot decode the audio ({len(data)} bytes): {e}; send wav, flac, ogg or mp3"
        ) from e
    if wave.size == 0:
        raise InputError("the audio holds no samples")
    return (wave.T if wave.ndim == 2 else wave), int(rate)


def input_items(raw: Any, max_inputs: int) -> tuple[str, list[Any]]:
    """``(kind, items)`` of an embeddings ``input``: texts, or decoded images / audio clips.

    ``input`` is a string, a list of strings, or a list of objects ``{"image": data URL}`` /
    ``{"audio": data URL}`` / ``{"text": str}`` (this server's extension), all of one kind.
    """
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise InputError("input is empty; pass a string or a non-empty list")
    if len(items) > max_inputs:
        raise InputError(f"input has {len(items)} items, more than this server's limit of "
                         f"{max_inputs} per request; split it into several requests")  # fmt: skip
    kinds = {_kind(item) for item in items}
    if len(kinds) != 1:
        raise InputError(f"all inputs of one request must be of one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "text":
        return kind, [item if isinstance(item, str) else item["text"] for item in items]
    decode = image_from_bytes if kind == "image" else audio_from_bytes
    return kind, [decode(decode_data_url(item[kind], kind)) for item in items]


def _kind(item: Any) -> str:
    if isinstance(item, str):
        return "text"
    if isinstance(item, dict) and len(item) == 1:
        key = next(iter(item))
        if key in ("text", "image", "audio") and (key != "text" or isinstance(item[key], str)):
            return key
    if isinstance(item, int | list):
        raise InputError("token-id inputs are not supported; send the text itself")
    raise InputError(
        'each input must be a string or one of {"text": str}, {"image": data URL}, '
        f'{{"audio": data URL}}; got {str(item)[:80]!r}'
    )
