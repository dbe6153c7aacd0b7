"""Hostile images: work and memory follow the output size, whatever the aspect ratio (10.1)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from provider_helpers import make_video, solid_frames

from llm_compression.errors import InputError
from llm_compression.preprocess.image import (
    MAX_WHOLE_RESIZE_ASPECT,
    center_crop,
    clip_pixels,
    resize_center_crop,
    resize_shortest_side,
)
from llm_compression.provider import sample_frames

_RSS_LIMIT = 2 << 30  # address space beyond the interpreter's own; the old code took 10 GB


def _thin_png_in_a_small_process(tmp_path, size: tuple[int, int]) -> subprocess.CompletedProcess:
    """clip_pixels on a ``size`` PNG in a child whose address space is capped."""
    path = tmp_path / "thin.png"
    Image.new("RGB", size, (200, 10, 10)).save(path)
    code = (
        "import resource, sys\n"
        "from llm_compression.preprocess.image import clip_pixels\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        f"resource.setrlimit(resource.RLIMIT_AS, (used + {_RSS_LIMIT}, hard))\n"
        f"print(tuple(clip_pixels([{str(path)!r}]).shape))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("size", [(1, 20000), (1, 40000), (40000, 1)])
def test_thin_png_is_bounded_by_the_output(tmp_path, size):
    done = _thin_png_in_a_small_process(tmp_path, size)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 3, 224, 224)"


def test_thin_image_pixels_are_the_whole_resize(tmp_path):
    # A solid colour: any resampling of it is that colour, so the bounded path must give it too.
    pixels = clip_pixels(np.full((30000, 1, 3), (200, 10, 10), np.uint8))
    reference = clip_pixels(np.full((4, 4, 3), (200, 10, 10), np.uint8))
    assert np.array_equal(pixels.numpy(), reference.numpy())


@pytest.mark.parametrize(
    "shape", [(2000, 3, 3), (3, 2000, 3), (700, 10, 3), (10, 700, 3), (9000, 100, 3)]
)
@pytest.mark.parametrize("crop", [224, 200, 256])
def test_long_images_match_the_whole_resize(shape, crop):
    arr = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    im = Image.fromarray(arr)
    whole = center_crop(np.asarray(resize_shortest_side(im, 224)), crop).astype(int)
    got = resize_center_crop(im, 224, crop).astype(int)
    assert got.shape == whole.shape
    diff = np.abs(got - whole)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01  # Pillow's float32 box offsets


@pytest.mark.parametrize("shape", [(224, 224 * MAX_WHOLE_RESIZE_ASPECT, 3), (300, 97, 3)])
def test_ordinary_aspect_ratios_stay_bit_exact(shape):
    arr = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    im = Image.fromarray(arr)
    whole = center_crop(np.asarray(resize_shortest_side(im, 224)), 224)
    assert np.array_equal(resize_center_crop(im, 224, 224), whole)


def test_mobilenet_style_resize_then_smaller_crop():
    arr = np.random.default_rng(4).integers(0, 256, (5, 4000, 3), dtype=np.uint8)
    assert resize_center_crop(Image.fromarray(arr), 256, 224).shape == (224, 224, 3)


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    pytest.importorskip("av")
    path = make_video(tmp_path / "v.mp4", solid_frames(3), size=(96, 64))
    with pytest.raises(InputError, match="96x64 = 6,144 pixel frames, over the limit of 6,000"):
        sample_frames(path, 2, max_pixels=6000)
    assert len(sample_frames(path, 2, max_pixels=6144)) == 2
