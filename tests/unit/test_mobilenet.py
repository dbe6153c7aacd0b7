"""MobileNetV2, the convolutional family: conversion from a state dict and parity with a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tv_mobilenet import random_reference

from llm_compression.convert import convert
from llm_compression.errors import ConversionError, InputError
from llm_compression.families import family, quantizable_names, tensor_shapes
from llm_compression.loader import load_model
from llm_compression.preprocess.image import imagenet_pixels

# torchvision's layout (the stages are not in a state dict: strides hold no tensor), 10 classes
SMALL = dict(classes=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ref = random_reference(**SMALL)
    path = tmp_path_factory.mktemp("mnv2") / "tiny.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def test_state_dict_needs_the_family(tiny, tmp_path):
    _, pth = tiny
    with pytest.raises(ConversionError, match="names no architecture.*mobilenet_v2"):
        convert(pth, tmp_path / "m.parquet")
    with pytest.raises(ConversionError, match="does not convert from state dicts"):
        convert(pth, tmp_path / "m.parquet", family="bert")


def test_logits_and_features_equal_the_reference(tiny, tmp_path):
    ref, pth = tiny
    out = convert(pth, tmp_path / "m.parquet", family="mobilenet_v2", dtype="float32")
    model = load_model(out)
    assert model.config.num_classes == 10 and model.config.labels == ()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = ref(x)
        feats = torch.nn.functional.adaptive_avg_pool2d(ref.features(x), 1).flatten(1)
    torch.testing.assert_close(model.logits(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_image(x), feats, atol=1e-5, rtol=1e-5)


def test_layout_comes_from_the_model():
    cfg = family("mobilenet_v2").presets["mobilenet-v2-imagenet"]
    shapes = tensor_shapes(cfg)
    assert shapes["stem.conv.weight"] == (32, 3, 3, 3)
    assert shapes["blocks.0.depthwise.conv.weight"] == (32, 1, 3, 3)
    assert "blocks.0.expand.conv.weight" not in shapes  # the t=1 block has no expansion
    assert shapes["head.conv.weight"] == (1280, 320, 1, 1)
    assert shapes["classifier.weight"] == (1000, 1280)
    assert quantizable_names(cfg) == {"classifier.weight"}  # convolutions stay float
    assert len(cfg.labels) == 1000 and cfg.labels[281] == "tabby"


def test_imagenet_pixels_match_resize_then_crop_and_bound_thin_images():
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    im = Image.fromarray(arr).resize((384, 256), Image.Resampling.BILINEAR)  # int(451*256/300)
    crop = np.asarray(im)[16:240, 80:304].astype(np.float32) / 255  # round((256-224)/2) = 16
    want = (crop - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )
    got = imagenet_pixels(arr)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    thin = imagenet_pixels(np.zeros((1, 40000, 3), np.uint8))  # would be 256 x 10.24M resized
    assert thin.shape == (1, 3, 224, 224)
    with pytest.raises(InputError, match="resize"):
        imagenet_pixels(arr, size=224, resize=200)


def test_classify_returns_labels_and_probabilities(tiny, tmp_path):
    _, pth = tiny
    model = load_model(convert(pth, tmp_path / "m.parquet", family="mobilenet_v2"))
    image = np.full((80, 60, 3), 100, np.uint8)
    [top] = model.classify([image], k=3)
    assert len(top) == 3 and all(isinstance(label, str) for label, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    with pytest.raises(InputError, match="k must be"):
        model.classify([image], k=0)


def test_provider_embeds_images_with_an_image_model(tiny, tmp_path):
    from llm_compression.errors import WrongFamilyError
    from llm_compression.provider import MultimodalEmbeddingProvider

    ref, pth = tiny
    path = convert(pth, tmp_path / "m.parquet", family="mobilenet_v2", dtype="float32")
    provider = MultimodalEmbeddingProvider(image_model=path)
    assert provider.image_dimension == 1280 and provider.loaded == {"image": False}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    vectors = provider.encode_image(images, batch_size=2)
    with torch.inference_mode():
        feats = torch.nn.functional.adaptive_avg_pool2d(ref.features(imagenet_pixels(images)), 1)
    want = torch.nn.functional.normalize(feats.flatten(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, want, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    with pytest.raises(WrongFamilyError, match="pass it as image_model"):
        MultimodalEmbeddingProvider(clip_model=path)  # MobileNet has no text tower
