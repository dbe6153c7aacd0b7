"""Fuzz: random image sizes, modes, aspect ratios, formats and damage give pixels or an InputError.

Sizes go up to 1 x 60000 (aspect ratios the old resize turned into gigabytes); every call must
return ``(N, 3, 224, 224)`` float32 or raise a typed error (issue 10).
"""

from __future__ import annotations

import io

import numpy as np
from hostile_helpers import fuzz
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from llm_compression.errors import LLMCompressionError
from llm_compression.preprocess.image import clip_pixels

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "HSV", "La"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA"]
_PIXELS = 400_000  # per example: big enough for 1 x 60000 strips, small enough for the budget


@st.composite
def sizes(draw) -> tuple[int, int]:
    short = draw(st.integers(1, 64))
    long = draw(st.integers(1, min(60_000, _PIXELS // short)))
    return (short, long) if draw(st.booleans()) else (long, short)


def _pixels(call):
    try:
        out = call()
    except LLMCompressionError as e:
        assert str(e)
        return
    assert out.dtype.is_floating_point and out.shape[1:] == (3, 224, 224)
    assert bool(out.isfinite().all())


@fuzz(60)
@given(size=sizes(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_pil_images(size, mode, seed):
    rgba = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), np.uint8)
    try:
        image = Image.fromarray(rgba, "RGBA").convert(mode)
    except ValueError:  # a conversion PIL itself does not offer
        return
    _pixels(lambda: clip_pixels(image))


@fuzz(40)
@given(
    size=sizes(), fmt=st.sampled_from(FORMATS), mode=st.sampled_from(["RGB", "L", "RGBA", "P"]),
    cut=st.one_of(st.none(), st.floats(0, 1)), junk=st.binary(max_size=32),
)  # fmt: skip
def test_files_of_every_format_whole_or_damaged(tmp_path_factory, size, fmt, mode, cut, junk):
    image = Image.new(mode, size, 120)
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # the format cannot hold this mode or size
        return
    raw = buf.getvalue() if cut is None else buf.getvalue()[: int(len(buf.getvalue()) * cut)] + junk
    path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    path.write_bytes(raw)
    _pixels(lambda: clip_pixels([path]))


@fuzz(60)
@given(
    arr=hnp.arrays(
        st.sampled_from(["uint8", "float32", "float64", "bool", "int16", "uint16", "int64"]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=700).filter(
            lambda shape: int(np.prod(shape)) <= _PIXELS
        ),
    )
)
def test_numpy_arrays(arr):
    _pixels(lambda: clip_pixels(arr))


@fuzz(20)
@given(size=st.integers(-3, 600), n=st.integers(0, 3), max_pixels=st.integers(-1, 10**6))
def test_arguments(size, n, max_pixels):
    images = [np.zeros((5, 7, 3), np.uint8)] * n
    try:
        out = clip_pixels(images, size=size, max_pixels=max_pixels)
    except LLMCompressionError:
        return
    assert out.shape == (n, 3, size, size)
