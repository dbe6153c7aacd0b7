"""Audio embeddings with Whisper base (real weights) and their cosine similarities.

    python examples/audio_similarity.py

Speech is synthesised with espeak-ng when it is installed (two paraphrases, one unrelated
sentence); a tone and white noise are added. Each clip is embedded as the mean of Whisper's encoder
states over the frames that hold audio, then L2-normalised.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from _common import whisper_base

from llm_compression.provider import MultimodalEmbeddingProvider

SENTENCES = {
    "weather-1": "The weather is lovely today.",
    "weather-2": "Today the weather is really nice.",
    "report": "Please send the quarterly sales report before Friday.",
}
SR = 16000


def clips(folder: Path) -> dict[str, object]:
    """name -> a wav path (speech) or a 16 kHz float32 array (tone, noise)."""
    out: dict[str, object] = {}
    espeak = shutil.which("espeak-ng") or shutil.which("espeak")
    if espeak:
        for name, text in SENTENCES.items():
            path = folder / f"{name}.wav"
            subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
            out[name] = path
    else:
        print("espeak-ng not found: only synthetic sounds are compared")
    t = np.arange(2 * SR) / SR
    out["tone-440Hz"] = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out["noise"] = np.random.default_rng(0).normal(0, 0.1, 2 * SR).astype(np.float32)
    return out


def main() -> None:
    provider = MultimodalEmbeddingProvider(audio_model=whisper_base())
    with tempfile.TemporaryDirectory() as tmp:
        inputs = clips(Path(tmp))
        names = list(inputs)
        # files carry their own rate; sample_rate applies to the arrays
        vectors = provider.encode_audio(list(inputs.values()), sample_rate=SR, batch_size=4)
    print(
        f"{len(names)} clips -> {vectors.shape} vectors (norms {np.linalg.norm(vectors, axis=1).round(4)})"
    )
    sims = vectors @ vectors.T
    print("\ncosine similarity")
    print(" " * 12 + "".join(f"{n[:10]:>11s}" for n in names))
    for name, row in zip(names, sims, strict=True):
        print(f"{name[:11]:12s}" + "".join(f"{v:11.3f}" for v in row))
    print()
    for i, name in enumerate(names):
        j = max((k for k in range(len(names)) if k != i), key=lambda k: sims[i, k])
        print(f"nearest to {name:11s}: {names[j]} ({sims[i, j]:.3f})")


if __name__ == "__main__":
    main()
