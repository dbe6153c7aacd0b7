"""`llm-compression demo`: the main job end to end on built-in real data.

1. convert the packaged real models (MiniLM, Whisper base, SmolLM2, torchvision's ImageNet
   MobileNetV2) and a random-init CLIP ViT-B/32 to zstd Parquet, and show what
   `llm-compression inspect` shows;
2. classify the photos (MobileNetV2), embed real text (MiniLM), photos (MobileNetV2 features) and
   speech (Whisper encoder);
3. store the vectors in Delta Lake tables and search them;
4. transcribe the speech and let SmolLM2 answer a prompt.

Everything is cached in the work directory, so a second run skips the conversions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SENTENCES = (
    "A cat is sleeping on a warm windowsill.",
    "The kitten curled up in the sun and dozed off.",
    "An astronaut floats outside the space station.",
    "A rocket lifts off from the launch pad in a cloud of smoke.",
    "Fresh coffee is poured into a white cup.",
    "The espresso machine hisses in the morning cafe.",
    "A horse gallops across an open field.",
    "The stock market fell sharply on Tuesday.",
)
QUERIES = ("a feline napping", "space travel", "a hot drink")
PROMPT = "In one sentence, what is a weight file?"
RANDOM_CLIP_NOTE = (
    "random-init weights: no real CLIP weights exist offline, image rankings are not meaningful"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="convert real models, embed real text/images/audio, store and search them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("artifacts/demo"), help="where files are written"
    )
    p.add_argument(
        "--dtype",
        default="float16",
        choices=("float32", "float16", "bfloat16", "int8"),
        help="storage dtype of the converted models (default float16)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="SmolLM2 answer length")
    p.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)


def _sources() -> dict[str, tuple[Path, str, str | None]]:
    """name -> (checkpoint, what it is, the family when the checkpoint does not name it)."""
    from llm_compression import weights

    return {
        "all-minilm-l6-v2": (weights.packaged_minilm(), "HF safetensors, real weights", None),
        "whisper-base": (weights.packaged_whisper_base(), "CTranslate2 fp16, real weights", None),
        "smollm2-135m-instruct": (weights.packaged_smollm2(), "GGUF Q4_1, real weights", None),
        "mobilenet-v2": (
            weights.packaged_mobilenet_v2(),
            "torchvision state dict, real weights",
            "mobilenet_v2",
        ),
    }


def _random_clip(workdir: Path) -> Path:
    from llm_compression.convert.random_init import save_random_clip

    folder = workdir / "sources" / "clip-vit-b-32-random"
    if not (folder / "config.json").is_file():
        save_random_clip(folder, seed=0)
    return folder


def convert_models(workdir: Path, dtype: str) -> dict[str, Path]:
    from llm_compression.commands.inspect import describe
    from llm_compression.convert import convert_cached

    sources = _sources()
    sources["clip-vit-b-32"] = (_random_clip(workdir), RANDOM_CLIP_NOTE, None)
    paths = {}
    for name, (src, note, family) in sources.items():
        dst = workdir / "models" / f"{name}-{dtype}.parquet"
        convert_cached(src, dst, dtype=dtype, family=family, progress=True)
        info = describe(dst)
        print(
            f"   {dst}  [{note}]\n"
            f"     family={info['family']} tensors={info['num_tensors']} "
            f"params={info['total_params']:,} size={info['file_size'] / 2**20:.1f} MiB "
            f"({info['ratio_vs_float32']:.2f}x of float32)"
        )
        paths[name] = dst
    return paths


def _photos() -> list[Path]:
    """The scikit-image sample photographs the validation uses (chelsea is the cat)."""
    from llm_compression.validation.inputs import photo_paths

    return list(photo_paths())


def _speech(workdir: Path) -> list[tuple[str, object]]:
    """The espeak-ng speech fixture, the same sentence resampled/stereo, and two tones."""
    import numpy as np

    from llm_compression.preprocess.audio import load_audio
    from llm_compression.validation.inputs import speech_path

    clips = [("hello_world.wav", load_audio(speech_path()))]
    stereo = (
        Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hello_world_stereo_44k.flac"
    )
    if stereo.is_file():
        clips.append((stereo.name, load_audio(stereo)))
    t = np.arange(16000 * 2) / 16000
    clips.append(("tone_440hz", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)))
    clips.append(("tone_880hz", (0.3 * np.sin(2 * np.pi * 880 * t)).astype(np.float32)))
    return clips


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from llm_compression.loader import load_model
    from llm_compression.provider import MultimodalEmbeddingProvider
    from llm_compression.tables import MultimodalStorage
    from llm_compression.validation.inputs import SPEECH_TEXT

    workdir: Path = args.workdir
    start = _step(f"1. convert real models to zstd Parquet ({args.dtype}) in {workdir}/models")
    paths = convert_models(workdir, args.dtype)
    _done(start)

    provider = MultimodalEmbeddingProvider(
        text_model=paths["all-minilm-l6-v2"],
        clip_model=paths["clip-vit-b-32"],
        image_model=paths["mobilenet-v2"],
        audio_model=paths["whisper-base"],
    )
    start = _step("2. classify the photos (MobileNetV2); embed real text, photos and speech")
    photos = _photos()
    labels = load_model(paths["mobilenet-v2"]).classify(photos, k=2)
    for photo, top in zip(photos, labels, strict=True):
        print(f"   {photo.name}: " + ", ".join(f"{label} ({p:.2f})" for label, p in top))
    text_vecs = provider.encode_batch(list(SENTENCES), batch_size=8)
    image_vecs = provider.encode_image(photos)
    clips = _speech(workdir)
    audio_vecs = provider.encode_audio([clip for _, clip in clips], sample_rate=16000)
    print(f"   text {text_vecs.shape}, images {image_vecs.shape}, audio {audio_vecs.shape}")
    _done(start)

    start = _step(f"3. store embeddings in {workdir}/store and search")
    store = MultimodalStorage(workdir / "store", provider=provider)
    for modality, ids, vecs, model in (
        ("text", [f"sentence-{i}" for i in range(len(SENTENCES))], text_vecs, "all-minilm-l6-v2"),
        ("image", [p.stem for p in photos], image_vecs, "mobilenet-v2"),
        ("audio", [name for name, _ in clips], audio_vecs, "whisper-base"),
    ):
        store.upsert(ids, np.asarray(vecs, dtype=np.float32), modality=modality,
                     model_file=paths[model])  # fmt: skip
    counts = {m: store.count(m) for m in store.modalities}
    print(f"   store holds {store.count()} vectors: {counts}")
    for query in QUERIES:
        hits = store.search(query, k=2, modality="text")
        best = ", ".join(f"{SENTENCES[int(h.id.split('-')[1])]!r} ({h.score:.3f})" for h in hits)
        print(f"   text query {query!r}: {best}")
    hits = store.search(audio_vecs[0], k=4, modality="audio")
    print(
        "   audio nearest to the speech clip: " + ", ".join(f"{h.id} ({h.score:.3f})" for h in hits)
    )
    hits = store.search(image_vecs[0], k=3, modality="image")
    print("   image nearest to chelsea: " + ", ".join(f"{h.id} ({h.score:.3f})" for h in hits))
    _done(start)

    start = _step("4. transcribe the speech (Whisper base) and generate (SmolLM2)")
    whisper = load_model(paths["whisper-base"])
    print(f"   spoken: {SPEECH_TEXT!r}\n   heard:  {whisper.transcribe(clips[0][1]).strip()!r}")
    llm = load_model(paths["smollm2-135m-instruct"])
    answer = llm.generate(PROMPT, chat=True, max_new_tokens=args.max_new_tokens)
    print(f"   prompt: {PROMPT!r}\n   answer: {answer.strip()!r}")
    _done(start)
    return 0
