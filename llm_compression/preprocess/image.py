"""Images -> CLIP pixel tensors, without transformers.

`load_image` turns a path, a PIL image of any mode or a numpy array into an RGB PIL image;
`clip_pixels` applies CLIP's preprocessing exactly as transformers' ``CLIPImageProcessor`` (PIL
backend) does it: shortest side resized to ``size`` with PIL bicubic, centre crop, rescale by 1/255,
normalise with the CLIP mean and std. `resize_center_crop` is that resize and crop on its own, for
any preprocessing of the kind (CLIP, video frames, MobileNet's resize-256-crop-224): its work and
memory follow the output size, whatever the aspect ratio of the input.

Conversions follow transformers where it defines them:

- transparency (modes with an ``A`` band, or a ``transparency`` entry such as a palette PNG) is
  composited onto white, for PIL images with ``Image.alpha_composite`` and for RGBA arrays with
  ``round(a * rgb + (1 - a) * 255)``;
- float arrays in [0, 1] become uint8 by truncating ``x * 255`` (as transformers' ``to_pil_image``
  and torchvision's ``to_pil_image`` do);
- files are opened with their EXIF orientation applied (``ImageOps.exif_transpose``).

Where transformers silently saturates, we scale instead and say so: 16-bit images (modes ``I;16*``
and ``I``, the range [0, 65535]) map to 8 bits by ``round(v / 257)``; float images (mode ``F``)
must lie in [0, 1]. Anything else that PIL can convert to RGB (``1``, ``L``, ``P``, ``CMYK``,
``YCbCr`` ...) goes through ``Image.convert("RGB")``.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, ModelFileNotFoundError

# PIL's own default limit (1024 * 1024 * 1024 // 4 // 3 pixels, ~89.5 MP, ~268 MB as RGB).
DEFAULT_MAX_PIXELS = 89_478_485
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_UINT16_TO_UINT8 = 257.0  # 65535 / 255
# Images up to this aspect ratio are resized whole and then cropped, exactly as transformers does it
# (a 1:64 image resized to 224 is 224 x 14336, 9.6 MB). Longer ones keep only the source rows (or
# columns) the centre crop reads, so a 1 x 20000 PNG does not become a 224 x 4,480,000 intermediate
# (10 GB); a few of their pixels may then differ from the whole resize by 1 or 2 (of 255): Pillow
# takes the offsets of the kept part as float32.
MAX_WHOLE_RESIZE_ASPECT = 64
_BICUBIC_SUPPORT = 2.0  # source pixels each side Pillow's bicubic reads (times the scale)
_PIL_LIMIT_LOCK = threading.Lock()
# What PIL's format plugins raise on a damaged file (a PPM header cut short: ValueError, a bad TIFF
# tag: struct.error or IndexError ...): all mean "this file cannot be decoded".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, struct.error)

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray


def load_image(x: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load one image as an RGB PIL image.

    Parameters
    ----------
    x : str, os.PathLike, PIL.Image.Image or numpy.ndarray
        A file path; a PIL image of any mode; or an array ``(H, W)`` or ``(H, W, C)`` with C in
        {1, 3, 4}, of dtype uint8, bool, or float with values in [0, 1].
    max_pixels : int
        Largest ``width * height`` accepted. Files are checked from their header before any pixel
        is decoded, so a decompression bomb never reaches memory.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, fully loaded (the file is closed).

    Raises
    ------
    ModelFileNotFoundError
        The path does not exist.
    InputError
        Unreadable or unsupported file, empty image, bad dtype or range, too many pixels.

    Examples
    --------
    >>> load_image(np.zeros((4, 6, 3), np.uint8)).size
    (6, 4)
    """
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(x, (str, os.PathLike)):
        return _load_file(os.fspath(x), max_pixels)
    if isinstance(x, Image.Image):
        _check_size(x.size, max_pixels, "image")
        return _to_rgb(x)
    if isinstance(x, np.ndarray):
        return _from_array(x, max_pixels)
    raise InputError(
        f"cannot read an image from {type(x).__name__}; expected a file path, a PIL image "
        "or a numpy array (H, W) / (H, W, C)"
    )


def _check_size(size: tuple[int, int], max_pixels: int, what: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{what} is empty ({width}x{height} pixels); pass a non-empty image")
    if width * height > max_pixels:
        raise InputError(
            f"{what} has {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; downscale it or raise the limit with load_image(..., max_pixels=N)"
        )


def _open_header(path: str, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with PIL's bomb check replaced by ours."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        if saved is not None and max_pixels > saved:
            Image.MAX_IMAGE_PIXELS = max_pixels  # PIL errors at 2x this, warns above it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _load_file(path: str, max_pixels: int) -> Image.Image:
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"image file not found: {path!r}; check the path")
    if os.path.isdir(path):
        raise InputError(f"{path!r} is a directory; pass the path of an image file")
    try:
        im = _open_header(path, max_pixels)
    except Image.DecompressionBombError as e:
        raise InputError(
            f"{path!r} is too large to decode safely ({e}); raise load_image(..., max_pixels=N)"
        ) from e
    except UnidentifiedImageError as e:
        raise InputError(f"{path!r} is not an image format PIL can read: {e}") from e
    except _DECODE_ERRORS as e:
        raise InputError(f"cannot read image {path!r} (damaged header?): {e!r}") from e
    with im:
        _check_size(im.size, max_pixels, f"image {path!r}")
        try:
            im.load()
            rgb = _to_rgb(ImageOps.exif_transpose(im))
        except InputError:
            raise
        except _DECODE_ERRORS as e:
            raise InputError(f"cannot decode image {path!r} (truncated or corrupt?): {e}") from e
        return rgb.copy() if rgb is im else rgb  # `with` closes `im`


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, compositing transparency onto white like transformers does."""
    if im.mode.startswith("I") or im.mode == "F":
        return _wide_to_rgb(im)
    if im.mode == "RGB" and im.info.get("transparency") is None:
        im.load()
        return im
    try:
        if "A" in im.getbands() or im.info.get("transparency") is not None:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except ValueError as e:
        raise InputError(
            f"cannot convert a PIL image of mode {im.mode!r} to RGB ({e}); convert it first"
        ) from e


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit integer (``I``, ``I;16*``) and float (``F``) images -> 8-bit RGB."""
    arr = np.asarray(im)
    if im.mode == "F":
        gray = _float_to_uint8(arr.astype(np.float64), f"PIL image of mode {im.mode!r}")
    else:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(
                f"PIL image of mode {im.mode!r} has values in [{lo}, {hi}]; expected 16-bit "
                "data in [0, 65535]; rescale it to uint8 and pass an array or an 'L' image"
            )
        gray = np.round(arr.astype(np.float64) / _UINT16_TO_UINT8).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")


def _float_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or infinite values; clean it before encoding")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{what} has float values in [{lo:g}, {hi:g}]; expected [0, 1]. "
            "Divide 0-255 data by 255, or pass it as uint8"
        )
    return (arr.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)


def _from_array(arr: np.ndarray, max_pixels: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass
    elif arr.ndim == 2:
        arr = arr[:, :, None]
    else:
        raise InputError(
            f"image array has shape {arr.shape}; expected (H, W) or (H, W, C) with C in "
            "{1, 3, 4} (channels last; move a leading channel axis with np.moveaxis(a, 0, -1))"
        )
    _check_size((arr.shape[1], arr.shape[0]), max_pixels, "image array")
    what = f"image array of dtype {arr.dtype}"
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _float_to_uint8(arr, what)
    elif arr.dtype != np.uint8:
        raise InputError(
            f"{what} is not supported; expected uint8 (0-255), bool, or float in [0, 1]"
        )
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4] / 255.0
        arr = np.round(alpha * arr[:, :, :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def resize_shortest_side(im: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic), with transformers' rounding.

    The longer side becomes ``int(size * long / short)`` (truncated, as
    ``get_resize_output_image_size(default_to_square=False)`` computes it).
    """
    width, height = im.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    return im.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def resize_center_crop(im: Image.Image, resize_to: int, crop: int) -> np.ndarray:
    """Shortest side to ``resize_to`` (bicubic), then the centre ``crop`` x ``crop``, as uint8.

    Equal to ``center_crop(np.asarray(resize_shortest_side(im, resize_to)), crop)``: bit-exact up to
    an aspect ratio of `MAX_WHOLE_RESIZE_ASPECT`; beyond it only the source rows (or columns) the
    crop reads are resized, so time and memory follow the output size, and a few pixels may be off
    by 1 or 2.
    Returns ``(crop, crop, C)`` (zero-padded where the resized image is smaller than ``crop``).
    """
    width, height = im.size
    short, long = min(width, height), max(width, height)
    new_long = int(resize_to * long / short)
    if new_long <= MAX_WHOLE_RESIZE_ASPECT * resize_to:
        return center_crop(np.asarray(resize_shortest_side(im, resize_to)), crop)
    return center_crop(np.asarray(_resize_window(im, resize_to, crop, new_long)), crop)


def _resize_window(im: Image.Image, resize_to: int, crop: int, new_long: int) -> Image.Image:
    """The part of ``resize_shortest_side(im, resize_to)`` that a centre crop keeps (long axis).

    Two one-axis passes in Pillow's own order (horizontal, then vertical) over just the source
    rows or columns the kept part reads: its centre ``min(crop, new_long)`` pixels of the long axis.
    """
    width, height = im.size
    tall = height > width
    long = height if tall else width
    length = min(crop, new_long)
    start = (new_long - length) // 2
    scale = long / new_long  # source pixels per resized pixel
    reach = _BICUBIC_SUPPORT * max(scale, 1.0) + 2
    first = max(0, math.floor(start * scale - reach))
    last = min(long, math.ceil((start + length) * scale + reach))
    lo, hi = start * scale - first, (start + length) * scale - first
    bicubic = Image.Resampling.BICUBIC
    if tall:
        rows = im.crop((0, first, width, last)).resize((resize_to, last - first), bicubic)
        return rows.resize((resize_to, length), bicubic, box=(0, lo, resize_to, hi))
    cols = im.crop((first, 0, last, height))
    cols = cols.resize((length, height), bicubic, box=(lo, 0, hi, height))
    return cols.resize((length, resize_to), bicubic)


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre crop an ``(H, W, C)`` array to ``size`` x ``size``, zero-padding if smaller.

    Offsets are ``(H - size) // 2`` and ``(W - size) // 2`` as in transformers' ``center_crop``.
    """
    height, width = arr.shape[:2]
    if height < size or width < size:
        new_h, new_w = max(height, size), max(width, size)
        padded = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
        top, left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
        padded[top : top + height, left : left + width] = arr
        arr, height, width = padded, new_h, new_w
    top, left = (height - size) // 2, (width - size) // 2
    return arr[top : top + size, left : left + size]


def clip_pixels(
    images: ImageInput | Sequence[ImageInput],
    *,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """CLIP pixel values for one image or a list of images.

    Parameters
    ----------
    images : image or sequence of images
        Anything `load_image` accepts, or a list/tuple of them.
    size : int
        The shorter side is resized to ``size``, then the centre ``size`` x ``size`` is cropped.
    mean, std : sequence of 3 floats
        Per-channel normalisation applied after rescaling to [0, 1].
    max_pixels : int
        Passed to `load_image`.

    Returns
    -------
    torch.Tensor
        float32, ``(N, 3, size, size)``.

    Examples
    --------
    >>> clip_pixels(np.zeros((300, 400, 3), np.uint8)).shape
    torch.Size([1, 3, 224, 224])
    """
    if not isinstance(size, int) or size <= 0:
        raise InputError(f"size must be a positive integer, got {size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise InputError(f"mean and std need 3 values (R, G, B), got {len(mean)} and {len(std)}")
    batch = list(images) if isinstance(images, (list, tuple)) else [images]
    if not batch:
        raise InputError("no images given; pass at least one image")
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    out = np.empty((len(batch), 3, size, size), dtype=np.float32)
    for i, item in enumerate(batch):
        crop = resize_center_crop(load_image(item, max_pixels=max_pixels), size, size)  # (S, S, 3)
        scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
        out[i] = ((scaled - mean32) / std32).transpose(2, 0, 1)
    return torch.from_numpy(out)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Above this aspect ratio the resized intermediate is not made: the crop window is resized straight
# from the source (PIL's ``box``), which bounds the work by the output size. Below it the result is
# torchvision's exactly; above it pixels may differ by one level in <0.1% of places.
MAX_EXACT_ASPECT = 16


def imagenet_pixels(
    images: ImageInput | Sequence[ImageInput],
    *,
    size: int = 224,
    resize: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """torchvision's ImageNet pipeline: shorter side to ``resize`` (bilinear), centre ``size``.

    ``transforms.Resize(resize)``, ``CenterCrop(size)``, ``ToTensor()``, ``Normalize(mean, std)``
    on PIL images (the MobileNetV2 weights' own transforms). Returns float32 ``(N, 3, size, size)``.

    Examples
    --------
    >>> imagenet_pixels(np.zeros((300, 400, 3), np.uint8)).shape
    torch.Size([1, 3, 224, 224])
    """
    for name, value in dict(size=size, resize=resize).items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if resize < size:
        raise InputError(f"resize={resize} must be at least the crop size={size}")
    batch = list(images) if isinstance(images, (list, tuple)) else [images]
    if not batch:
        raise InputError("no images given; pass at least one image")
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = np.empty((len(batch), 3, size, size), dtype=np.float32)
    for i, item in enumerate(batch):
        crop = _imagenet_crop(load_image(item, max_pixels=max_pixels), size, resize)
        scaled = np.asarray(crop, dtype=np.float32) / 255.0
        out[i] = ((scaled - mean32) / std32).transpose(2, 0, 1)
    return torch.from_numpy(out)


def _imagenet_crop(im: Image.Image, size: int, resize: int) -> Image.Image:
    """Resize the shorter side to ``resize`` then take the centre ``size`` square (torchvision)."""
    width, height = im.size
    short, long = min(width, height), max(width, height)
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    bilinear = Image.Resampling.BILINEAR
    if new_long <= MAX_EXACT_ASPECT * resize:
        return im.resize((new_w, new_h), bilinear).crop((left, top, left + size, top + size))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return im.resize((size, size), bilinear, box=box)
