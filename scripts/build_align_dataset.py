"""Build the small real alignment dataset: scikit-image photos, captions, espeak-ng speech and
synthetic sounds, as JSONL records (docs/alignment.md).

    python scripts/build_align_dataset.py OUT_DIR [--per-subject 12] [--seed 0] [--convert]

Each of 8 subjects (the cat photo, the horse, the astronaut ...) gets ``--per-subject`` records: a
random crop / flip / brightness change of its photo, one of its captions, and audio that is
either espeak-ng speaking the caption (even records) or a synthetic sound of the subject (odd
records: a meow-like sweep, hoof beats, radio beeps ...). Report labels (emotion, behaviours) are
fixed per subject. Writes OUT_DIR/records.jsonl, OUT_DIR/image/*.png, OUT_DIR/audio/*.wav and a
training config OUT_DIR/align.toml whose [models] point at OUT_DIR/models/ (``--convert`` writes
them there from the packaged weights: MiniLM, MobileNetV2, Whisper base, SmolLM2-135M).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SR = 16000
# subject: (skimage file, emotion, behaviours, captions)
SUBJECTS = {
    "cat": (
        "chelsea.png",
        "calm",
        ["resting", "watching"],
        [
            "a tabby cat sitting calmly",
            "a ginger cat resting indoors",
            "a cat watching quietly",
            "a relaxed cat looking at the camera",
            "a striped cat lying still",
        ],
    ),
    "horse": (
        "horse.png",
        "alert",
        ["moving"],
        [
            "a horse standing in a field",
            "a dark horse ready to run",
            "an alert horse outdoors",
            "a horse with its head raised",
            "a horse moving across the grass",
        ],
    ),
    "astronaut": (
        "astronaut.png",
        "content",
        ["watching"],
        [
            "an astronaut smiling in a space suit",
            "a person in an orange space suit",
            "an astronaut posing with a flag",
            "a smiling astronaut portrait",
            "a space traveller in uniform",
        ],
    ),
    "coffee": (
        "coffee.png",
        "calm",
        ["eating"],
        [
            "a cup of coffee on a saucer",
            "a hot drink in a white cup",
            "coffee with a spoon",
            "a cup of espresso on a table",
            "a warm cup of coffee",
        ],
    ),
    "rocket": (
        "rocket.jpg",
        "alert",
        ["moving", "vocalising"],
        [
            "a rocket launching into the sky",
            "a space rocket lifting off with smoke",
            "a rocket on the launch pad",
            "a loud rocket launch",
            "a rocket rising on fire",
        ],
    ),
    "motorcycle": (
        "motorcycle_left.png",
        "playful",
        ["moving"],
        [
            "a red motorcycle parked",
            "a motorbike seen from the side",
            "a sports motorcycle",
            "a shiny motorcycle in a garage",
            "a fast racing motorbike",
        ],
    ),
    "coins": (
        "coins.png",
        "curious",
        ["exploring"],
        [
            "old coins on a table",
            "a collection of metal coins",
            "many round coins",
            "coins laid out in rows",
            "a pile of ancient coins",
        ],
    ),
    "cameraman": (
        "camera.png",
        "curious",
        ["watching", "exploring"],
        [
            "a man with a camera on a tripod",
            "a photographer in a coat",
            "a cameraman outdoors",
            "a man taking a photograph",
            "a person looking through a camera",
        ],
    ),
}
VOICES = ["en", "en-us", "en+f3", "en-gb-x-rp", "en+m3"]


def _photo(name: str) -> Image.Image:
    import skimage

    image = Image.open(Path(skimage.__file__).parent / "data" / name)
    return image.convert("RGB")


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    scale = rng.uniform(0.6, 0.95)
    cw, ch = int(w * scale), int(h * scale)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.75, 1.25))
    out.thumbnail((256, 256))
    return out


def _tone(f: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * np.cumsum(f) / SR)


def synthetic_sound(subject: str, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """A short sound that stands for the subject (varied by ``rng``)."""
    n = int(SR * seconds)
    t = np.arange(n) / SR
    noise = rng.normal(size=n)
    base = rng.uniform(0.9, 1.1)
    if subject == "cat":  # meow: a rising-falling harmonic sweep
        f = base * (500 + 300 * np.sin(np.pi * t / seconds))
        x = sum(_tone(f * k) / k for k in (1, 2, 3)) * np.sin(np.pi * t / seconds)
    elif subject == "horse":  # hoof beats: three-beat clicks
        x = np.zeros(n)
        for start in np.arange(0, seconds, 0.45 * base):
            for d in (0, 0.1, 0.2):
                i = min(int((start + d) * SR), n - 400)
                x[i : i + 400] += np.exp(-np.arange(400) / 60) * noise[:400]
    elif subject == "astronaut":  # radio beeps (Quindar-like tones)
        x = _tone(np.full(n, 2525.0 * base)) * ((t * 2 % 1) < 0.25)
    elif subject == "coffee":  # bubbling: random short rising blips
        x = np.zeros(n)
        for i in rng.integers(0, n - 800, 25):
            x[i : i + 800] += _tone(np.linspace(300, 900, 800) * base) * np.hanning(800)
    elif subject == "rocket":  # roar: low-passed noise swelling
        x = np.convolve(noise, np.ones(40) / 40, mode="same") * np.minimum(1, t * 2) * 6
    elif subject == "motorcycle":  # engine: a buzzing low sawtooth with wobble
        f = base * (90 + 20 * np.sin(2 * np.pi * 1.5 * t))
        x = 2 * ((np.cumsum(f) / SR) % 1) - 1
    elif subject == "coins":  # clinks: decaying high tones
        x = np.zeros(n)
        for i in rng.integers(0, n - 3000, 8):
            k = np.arange(3000)
            x[i : i + 3000] += np.sin(2 * np.pi * rng.uniform(3000, 5000) * k / SR) * np.exp(
                -k / 500
            )
    else:  # cameraman: shutter clicks
        x = np.zeros(n)
        for start in np.arange(0.2, seconds - 0.2, 0.6 * base):
            i = int(start * SR)
            x[i : i + 200] += noise[:200]
            x[i + 1500 : i + 1700] += noise[200:400]
    x = x + 0.01 * noise
    return (0.8 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SR)
        f.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def speak(path: Path, text: str, voice: str, speed: int) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)


def build(out: Path, per_subject: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for subject, (file, emotion, behaviours, captions) in SUBJECTS.items():
        photo = _photo(file)
        for i in range(per_subject):
            rid = f"{subject}-{i:02d}"
            augment(photo, rng).save(out / "image" / f"{rid}.png")
            caption = captions[int(rng.integers(len(captions)))]
            audio = out / "audio" / f"{rid}.wav"
            if i % 2 == 0:
                speak(audio, caption, VOICES[i // 2 % len(VOICES)], int(rng.integers(140, 190)))
            else:
                write_wav(audio, synthetic_sound(subject, rng))
            lines.append({"id": rid, "image": f"image/{rid}.png", "audio": f"audio/{rid}.wav",
                          "text": caption, "label": subject, "emotion": emotion,
                          "behaviours": behaviours})  # fmt: skip
    path = out / "records.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


CONFIG = """dataset = "records.jsonl"
cache = "features"
out = "runs"
batch_size = 24
holdout = 0.25
workers = 2
prompt_tokens = 4

[models]
text = "models/minilm.parquet"
image = "models/mobilenet-v2.parquet"
audio = "models/whisper-base.parquet"
llm = "models/smollm2.parquet"

[loss]
name = "info_nce"
temperature = 0.07

[[stages]]  # single-modality warm-up: text <-> image only
name = "warmup"
epochs = 30
lr = 1e-3
pairs = [["text", "image"]]
train = ["text", "image"]

[[stages]]  # cross-modal: every pair, every head
name = "cross"
epochs = 60
lr = 5e-4
pairs = [["text", "image"], ["audio", "text"], ["image", "audio"]]
train = ["text", "image", "audio"]

[[stages]]  # report: projector only, LLM frozen; inputs hidden at random so any subset works
name = "report"
epochs = 15
lr = 3e-3
batch_size = 6
align_weight = 0.0
report_weight = 1.0
modality_dropout = 0.5
train = ["projector"]
"""


def convert_models(folder: Path) -> None:
    from llm_compression import weights
    from llm_compression.convert import convert_cached

    folder.mkdir(parents=True, exist_ok=True)
    convert_cached(weights.packaged_minilm(), folder / "minilm.parquet")
    convert_cached(weights.packaged_whisper_base(), folder / "whisper-base.parquet")
    convert_cached(weights.packaged_smollm2(), folder / "smollm2.parquet")
    if not (folder / "mobilenet-v2.parquet").is_file():
        from llm_compression.convert import convert

        convert(weights.packaged_mobilenet_v2(), folder / "mobilenet-v2.parquet",
                family="mobilenet_v2")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-subject", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--convert", action="store_true", help="convert the models too")
    args = parser.parse_args()
    print(build(args.out, args.per_subject, args.seed))
    if not (args.out / "align.toml").exists():
        (args.out / "align.toml").write_text(CONFIG)
    if args.convert:
        convert_models(args.out / "models")


if __name__ == "__main__":
    main()
