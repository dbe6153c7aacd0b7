"""The provider on real weights (MiniLM, Whisper base) and the real-shape CLIP ViT-B/32.

Golden comparisons run transformers on the same weights: MiniLM against BertModel + mean pooling,
CLIP (random init, the real architecture) against CLIPModel's forward.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_compression.convert import convert
from llm_compression.families.clip import write_clip_vocab
from llm_compression.preprocess.image import clip_pixels
from llm_compression.provider import CLIPEngine, MultimodalEmbeddingProvider
from llm_compression.weights import clip_bpe_vocab, packaged_minilm

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PHOTOS = ("chelsea", "astronaut", "coffee", "horse", "rocket")


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _photo(name):
    import skimage.data
    from PIL import Image

    root = Path(skimage.data.__file__).parent
    path = next(p for p in (root / f"{name}.png", root / f"{name}.jpg") if p.exists())
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def minilm(real_minilm_parquet):  # session fixture of tests/conftest.py (float32)
    return MultimodalEmbeddingProvider(text_model=real_minilm_parquet)


@pytest.fixture(scope="module")
def whisper(real_whisper_base_parquet):
    return MultimodalEmbeddingProvider(audio_model=real_whisper_base_parquet)


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
    """(HF CLIPModel ViT-B/32 with random weights, our converted float32 file of it)."""
    import transformers

    folder = tmp_path_factory.mktemp("clip_hf")
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
    hf.save_pretrained(folder)
    write_clip_vocab(folder, clip_bpe_vocab())
    path = convert(folder, tmp_path_factory.mktemp("clip") / "clip.parquet", dtype="float32")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    shutil.rmtree(folder)
    return hf, tokenizer, path


# -- MiniLM -------------------------------------------------------------------------------------


def test_minilm_matches_transformers_mean_pooling(minilm):
    import transformers

    texts = ["A man is eating food.", "The new movie is awesome", "short", "Ünïcödé text ✓ " * 20]
    ours = minilm.encode_batch(texts, batch_size=3)
    tok = transformers.AutoTokenizer.from_pretrained(packaged_minilm())
    model = transformers.AutoModel.from_pretrained(packaged_minilm()).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert ours.shape == (4, 384)
    for a, b in zip(ours, ref, strict=True):
        assert _cos(a, b) >= 0.9999


def test_minilm_semantics_and_batch_invariance(minilm):
    p = minilm
    cat, kitten, stocks = p.encode_batch(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Stock markets fell sharply.",
        ]
    )
    assert cat @ kitten > cat @ stocks + 0.3
    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(20)]
    alone = np.stack([p.encode(t) for t in texts])
    for batch_size in (4, 7, 32):
        batched = p.encode_batch(texts[::-1], batch_size=batch_size)[::-1]
        assert min(_cos(a, b) for a, b in zip(alone, batched, strict=True)) >= 0.9999


# -- Whisper base ---------------------------------------------------------------------------------


def _speech(tmp_path, text, name, speed=175):
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng (Debian package) is not installed")
    path = tmp_path / f"{name}.wav"
    subprocess.run(
        [espeak, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True
    )
    return path


def test_whisper_speech_is_closer_to_speech_than_to_noise(whisper, tmp_path):
    p = whisper
    a = _speech(tmp_path, "The weather is lovely today.", "a")
    b = _speech(tmp_path, "Today the weather is really nice.", "b", speed=150)
    noise = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
    va, vb, vn = p.encode_audio([a, b, noise], sample_rate=16000)
    assert va.shape == (512,)
    assert va @ vb > va @ vn + 0.1


def test_whisper_real_file_and_batch_invariance(whisper):
    import soundfile as sf

    p = whisper
    path = FIXTURES / "hello_world_stereo_44k.flac"
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # (samples, channels)
    from_file = p.encode_audio(path)[0]
    assert _cos(from_file, p.encode_audio(data.T, sample_rate=rate)[0]) >= 0.9999
    short = (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    alone_short = p.encode_audio(short, sample_rate=16000)[0]
    batched = p.encode_audio([short, path], sample_rate=16000, batch_size=2)  # rate: arrays only
    assert _cos(batched[0], alone_short) >= 0.9999 and _cos(batched[1], from_file) >= 0.9999


# -- CLIP ViT-B/32, real shapes ---------------------------------------------------------------------


def test_clip_engine_matches_transformers(clip_pair):
    hf, tokenizer, path = clip_pair
    engine = CLIPEngine(path)
    images = [_photo(n) for n in PHOTOS]
    texts = ["a photo of a cat", "a rocket on the launch pad", "coffee"]
    ours_i = engine.encode_image(images, batch_size=2)
    ours_t = engine.encode_text(texts, batch_size=2)
    assert ours_i.shape == (5, 512) and ours_t.shape == (3, 512)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 pixel_values=clip_pixels(images))  # fmt: skip
    for a, b in zip(ours_i, out.image_embeds.numpy(), strict=True):
        assert _cos(a, b) >= 0.9999
    for a, b in zip(ours_t, out.text_embeds.numpy(), strict=True):
        assert _cos(a, b) >= 0.9999
    probs = engine.zero_shot_classification(images[0], ["cat", "rocket", "coffee"], template="{}")
    batch = tokenizer(["cat", "rocket", "coffee"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**batch, pixel_values=clip_pixels(images[:1])).logits_per_image[0].softmax(-1)
    np.testing.assert_allclose(list(probs.values()), ref.numpy(), atol=1e-4)


def test_real_shape_provider_video_and_invariance(clip_pair, tmp_path):
    import av
    from PIL import Image

    _, _, path = clip_pair
    p = MultimodalEmbeddingProvider(clip_model=path)
    images = [_photo(n) for n in PHOTOS]
    alone = np.concatenate([p.encode_image(im) for im in images])
    batched = p.encode_image(images[::-1], batch_size=3)[::-1]
    assert min(_cos(a, b) for a, b in zip(alone, batched, strict=True)) >= 0.9999
    video = tmp_path / "v.webm"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=4)
        s.width, s.height, s.pix_fmt = 160, 128, "yuv420p"
        for im in images:
            arr = np.asarray(Image.fromarray(im).resize((160, 128)))
            for packet in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    vec = p.encode_video(video, frames=16)  # 5 frames: all are used
    assert vec.shape == (512,)
    frames = [np.asarray(Image.fromarray(im).resize((160, 128))) for im in images]
    expected = p.encode_image(frames).mean(axis=0)
    assert _cos(vec, expected) > 0.995  # lossy codec: frames differ slightly from the sources
