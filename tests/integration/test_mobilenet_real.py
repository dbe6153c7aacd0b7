"""torchvision's real ImageNet MobileNetV2 through our file: parity and sensible labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tv_mobilenet import ReferenceMobileNetV2

from llm_compression.loader import load_model
from llm_compression.preprocess.image import imagenet_pixels
from llm_compression.weights import packaged_mobilenet_v2

pytestmark = pytest.mark.integration


def _photos(*names: str) -> list[str]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [str(root / n) for n in names]


@pytest.fixture(scope="module")
def pair(real_mobilenet_v2_parquet):
    ref = ReferenceMobileNetV2()
    state = torch.load(packaged_mobilenet_v2(), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)  # torchvision's exact layout
    return ref.eval(), load_model(real_mobilenet_v2_parquet)


def test_logits_match_the_reference_on_real_photos(pair):
    ref, model = pair
    pixels = imagenet_pixels(_photos("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"))
    with torch.inference_mode():
        want = ref(pixels)
    got = model.logits(pixels)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert model.encode_image(pixels).shape == (4, 1280)


def test_top5_labels_are_sensible(pair):
    _, model = pair
    cat, coffee, moto = model.classify(_photos("chelsea.png", "coffee.png", "motorcycle_left.png"))
    assert {label for label, _ in cat[:3]} & {"tabby", "tiger cat", "Egyptian cat"}
    assert coffee[0][0] in {"espresso", "cup", "coffee mug"}
    assert moto[0][0] in {"moped", "motor scooter", "crash helmet", "disk brake"}
    assert all(len(top) == 5 for top in (cat, coffee, moto))
