"""preprocess.image: load_image conversions and errors, clip_pixels vs CLIPImageProcessor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from llm_compression.errors import InputError, ModelFileNotFoundError
from llm_compression.preprocess.image import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    clip_pixels,
    load_image,
    resize_shortest_side,
)


@pytest.fixture(scope="module")
def hf_processor():
    pil_clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    return pil_clip.CLIPImageProcessorPil()


def _reference(processor, image) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"]


def _random(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
    "shape", [(1, 1, 3), (7, 300, 3), (225, 224, 3), (224, 224, 3), (223, 500, 3), (301, 97, 3)]
)
def test_clip_pixels_matches_hf_on_odd_sizes(hf_processor, shape):
    arr = _random(shape)
    ref = _reference(hf_processor, Image.fromarray(arr))
    got = clip_pixels(arr)
    assert got.shape == (1, 3, 224, 224) and got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "mode", ["L", "LA", "P", "PA", "CMYK", "1", "RGBA", "YCbCr", "HSV", "I;16"]
)
def test_clip_pixels_matches_hf_for_pil_modes(hf_processor, mode):
    rgba = Image.fromarray(_random((90, 130, 4), seed=1), mode="RGBA")
    image = rgba.convert(mode) if mode != "I;16" else None
    if mode == "P":  # a palette image with a transparent index, as GIF/PNG carry it
        image.info["transparency"] = 0
    if mode == "I;16":  # HF saturates 16-bit data; we scale it: compare with the 8-bit version
        gray8 = _random((90, 130), seed=2)
        image = Image.fromarray(gray8.astype(np.uint16) * 257)
        assert image.mode == "I;16"
        ref = _reference(hf_processor, Image.fromarray(gray8))
    else:
        ref = _reference(hf_processor, image)
    assert (clip_pixels(image) - ref).abs().max().item() <= 1e-5


def test_float_and_bool_arrays(hf_processor):
    arr = _random((40, 60, 3), seed=3)
    as_float = arr.astype(np.float64) / 255
    ref = _reference(hf_processor, Image.fromarray(arr))
    assert (clip_pixels(as_float) - ref).abs().max().item() <= 1e-5
    mask = np.random.default_rng(4).random((30, 50)) > 0.5
    ref = _reference(hf_processor, Image.fromarray(mask.astype(np.uint8) * 255))
    assert (clip_pixels(mask) - ref).abs().max().item() <= 1e-5


def test_rgba_array_composites_on_white():
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 0] = 200
    arr[0, 0, 3] = 255  # opaque red-ish pixel; the rest transparent -> white
    out = np.asarray(load_image(arr))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


def test_paths_and_exif_orientation(tmp_path):
    arr = _random((20, 30, 3), seed=5)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), arr)
    np.testing.assert_array_equal(np.asarray(load_image(str(path))), arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    jpg = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(jpg, exif=exif, quality=95)
    assert load_image(jpg).size == (20, 30)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    with pytest.raises(InputError, match="max_pixels"):
        load_image(path, max_pixels=400 * 300 - 1)
    assert load_image(path, max_pixels=400 * 300).size == (400, 300)
    with pytest.raises(InputError, match="max_pixels"):
        load_image(np.zeros((10, 10, 3), np.uint8), max_pixels=99)


def test_limit_above_pil_default_is_honoured(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("L", (200, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # PIL would refuse at 2x = 10000
    assert load_image(path, max_pixels=20000).size == (200, 100)
    assert Image.MAX_IMAGE_PIXELS == 5000  # restored


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (np.full((4, 4, 3), 1.5), r"\[0, 1\]"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((3, 4, 4, 3), np.uint8), "shape"),
        ([1, 2, 3], "list"),
    ],
)
def test_bad_arrays_raise_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        load_image(bad)


def test_bad_files(tmp_path):
    with pytest.raises(ModelFileNotFoundError):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "text.png")
    buf = io.BytesIO()
    Image.fromarray(_random((64, 64, 3))).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:200])
    with pytest.raises(InputError):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


def test_clip_pixels_batch_and_arguments():
    imgs = [_random((50, 80, 3), seed=i) for i in range(3)]
    batch = clip_pixels(imgs, size=32)
    assert batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch[1], clip_pixels(imgs[1], size=32)[0])
    with pytest.raises(InputError):
        clip_pixels([])
    with pytest.raises(InputError):
        clip_pixels(imgs, size=0)
    with pytest.raises(InputError):
        clip_pixels(imgs, mean=(0.5, 0.5))


@settings(max_examples=40, deadline=None)
@given(w=st.integers(1, 600), h=st.integers(1, 600), size=st.integers(1, 64))
def test_resize_and_crop_geometry(w, h, size):
    im = resize_shortest_side(Image.new("RGB", (w, h)), size)
    assert min(im.size) == size
    crop = center_crop(np.asarray(im), size)
    assert crop.shape == (size, size, 3)


def test_default_constants_are_openai_clip():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
