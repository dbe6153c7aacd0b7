"""Zero-shot classification of the scikit-image photos with CLIPEngine.

    python examples/zero_shot_classification.py

Each photo is scored against text prompts "a photo of a {label}." and CLIP's softmax turns the
cosine similarities (times CLIP's logit scale) into probabilities.
"""

from __future__ import annotations

import time

from _common import PHOTOS, RANDOM_CLIP_NOTE, photo_path, random_clip

from llm_compression.provider import CLIPEngine

LABELS = ["cat", "astronaut", "cup of coffee", "horse", "rocket", "motorcycle"]


def main() -> None:
    path = random_clip()
    print(RANDOM_CLIP_NOTE)
    start = time.perf_counter()
    clip = CLIPEngine(path)
    print(f"loaded {path.name} in {time.perf_counter() - start:.2f} s; "
          f"logit scale {clip.logit_scale:.2f}, embedding dim {clip.embedding_dim}")  # fmt: skip
    print(f"labels: {LABELS}\n")
    for name in PHOTOS:
        probs = clip.zero_shot_classification(photo_path(name), LABELS)
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{label} {p:.3f}" for label, p in ranked[:3])
        print(f"{photo_path(name).name:22s} -> {ranked[0][0]:14s} (sum of probs "
              f"{sum(probs.values()):.4f}) top-3: {top}")  # fmt: skip


if __name__ == "__main__":
    main()
