"""Fixed real inputs for precision validation: photos, speech, sentences and prompts.

Photos are the scikit-image sample photographs (located with ``find_spec``, never imported);
speech is the espeak-ng fixture ``tests/fixtures/hello_world.wav`` when the source tree has it,
otherwise espeak-ng synthesises the same sentence into a temporary file at run time.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileNotFoundError

PHOTOS = ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
SPEECH_TEXT = "Hello world. A quick brown fox jumps over the lazy dog."
SPEECH_FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hello_world.wav"
# Past the 256-token limit of sentence-transformers (and CLIP's 77): truncation must agree.
LONG_SENTENCE = " ".join(
    f"Sentence {i} of a long paragraph about compressed model weights, Parquet files and "
    "checking that two implementations truncate their input at the same token."
    for i in range(1, 13)
)
SENTENCES = (
    "A photo of a cat.",
    "An astronaut standing in front of a flag.",
    "A cup of coffee on a saucer.",
    "The rocket lifts off from the launch pad.",
    "A red motorcycle parked on the street.",
    "Parquet stores columns; zstd compresses them well!",
    LONG_SENTENCE,
)
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
)
CHAT_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")


@dataclass(frozen=True)
class ValidationInputs:
    """Inputs shared by both sides of a comparison; each family uses the ones it needs."""

    images: tuple[Path, ...] = ()
    speech: tuple[Path, ...] = ()
    sentences: tuple[str, ...] = SENTENCES
    prompts: tuple[str, ...] = PROMPTS
    chat_prompts: tuple[str, ...] = CHAT_PROMPTS
    max_new_tokens: int = 64
    language: str = "en"


def photo_paths(names: tuple[str, ...] = PHOTOS) -> tuple[Path, ...]:
    """Paths of scikit-image sample photographs (``skimage/data/NAME``)."""
    spec = importlib.util.find_spec("skimage")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelFileNotFoundError(
            "scikit-image is not installed; its sample photos are the validation images: "
            "run `pip install scikit-image`"
        )
    data = Path(locations[0]) / "data"
    missing = [n for n in names if not (data / n).is_file()]
    if missing:
        raise ModelFileNotFoundError(
            f"{missing} are missing from {data}; reinstall scikit-image "
            "(`pip install --force-reinstall scikit-image`)"
        )
    return tuple(data / n for n in names)


def speech_path(text: str = SPEECH_TEXT) -> Path:
    """The espeak-ng speech fixture, or ``text`` spoken by espeak-ng into a temporary WAV file."""
    if SPEECH_FIXTURE.is_file() and text == SPEECH_TEXT:
        return SPEECH_FIXTURE
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ModelFileNotFoundError(
            f"{SPEECH_FIXTURE} is absent and espeak-ng is not installed to synthesise speech; "
            "run `apt-get install espeak-ng` or pass your own speech file"
        )
    out = Path(tempfile.mkdtemp(prefix="llmc-speech-")) / "speech.wav"
    subprocess.run([exe, "-w", str(out), text], check=True, capture_output=True)
    return out


def default_inputs(family: str) -> ValidationInputs:
    """The fixed inputs for a model family (``clip``, ``whisper``, ``bert``, ``olmo``, ``llama``)."""
    if family == "clip":
        return ValidationInputs(images=photo_paths())
    if family == "whisper":
        return ValidationInputs(speech=(speech_path(),))
    return ValidationInputs()
