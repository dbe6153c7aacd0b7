"""Text -> image retrieval with CLIP, and text -> text retrieval with MiniLM.

    python examples/text_image_retrieval.py

CLIP's text and image towers share one space: `find_best_matches` ranks photos for a query and
`compute_cross_modal_similarity` gives the whole (texts x images) matrix. MiniLM (real weights)
ranks captions for paraphrased queries, which shows meaningful semantics.
"""

from __future__ import annotations

import numpy as np
from _common import PHOTOS, RANDOM_CLIP_NOTE, minilm, photo, random_clip

from llm_compression.provider import MultimodalEmbeddingProvider, top_k

QUERIES = ["a kitten", "space travel", "a hot drink", "a pony", "a vehicle with two wheels"]
CAPTIONS = {
    "chelsea": "a tabby cat looking to the side",
    "astronaut": "an astronaut in a white spacesuit in front of a flag",
    "coffee": "a cup of coffee on a saucer",
    "horse": "a horse standing in a field",
    "rocket": "a rocket on the launch pad",
    "motorcycle_left": "a motorbike parked on a street",
}


def main() -> None:
    provider = MultimodalEmbeddingProvider(text_model=minilm(), clip_model=random_clip())
    images = [photo(name) for name in PHOTOS]

    print("== CLIP: text -> image ==")
    print(RANDOM_CLIP_NOTE)
    sims = provider.compute_cross_modal_similarity(QUERIES, images)  # (queries, photos)
    print(f"cross-modal similarity matrix {sims.shape} (queries x photos)")
    for query, row in zip(QUERIES, sims, strict=True):
        ranked = top_k(row, 3)
        print(f"{query!r:28s} -> " + ", ".join(f"{PHOTOS[i]} {s:+.3f}" for i, s in ranked))
    best = provider.clip_engine.find_best_matches(QUERIES[0], images, top_k=2)
    print(
        f"find_best_matches({QUERIES[0]!r}, top_k=2) -> {[(PHOTOS[i], round(s, 3)) for i, s in best]}"
    )

    print("\n== MiniLM (real weights): query -> caption ==")
    names = list(CAPTIONS)
    captions = provider.encode_batch(list(CAPTIONS.values()))
    queries = provider.encode_batch(QUERIES)
    scores = queries @ captions.T
    for query, row in zip(QUERIES, scores, strict=True):
        order = np.argsort(-row)
        print(f"{query!r:28s} -> {names[order[0]]:16s} {row[order[0]]:.3f}  "
              f"(next: {names[order[1]]} {row[order[1]]:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
