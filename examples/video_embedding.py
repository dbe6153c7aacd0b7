"""Video embedding: frames sampled evenly with PyAV, embedded with CLIP's image tower, mean-pooled.

    python examples/video_embedding.py

A short video is made on the fly from scikit-image photos (a cat, then a rocket). The video vector
is the L2-normalised mean of its frame embeddings; it is compared with each photo's own vector.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import av
import numpy as np
from _common import RANDOM_CLIP_NOTE, photo, photo_path, random_clip
from PIL import Image

from llm_compression.errors import InputError
from llm_compression.provider import MultimodalEmbeddingProvider, count_frames, sample_frames

SCENES = ("chelsea", "rocket")  # each shown for 20 frames at 10 fps


def make_video(path: Path, size=(224, 160)) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for name in SCENES:
            frame = np.asarray(Image.fromarray(photo(name)).resize(size))
            for _ in range(20):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main() -> None:
    provider = MultimodalEmbeddingProvider(clip_model=random_clip())
    print(RANDOM_CLIP_NOTE)
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "cat_then_rocket.mp4")
        total = count_frames(video)
        frames = sample_frames(video, 8)
        print(f"{video.name}: {total} frames; sampled {len(frames)} evenly, "
              f"{frames[0].size[0]}x{frames[0].size[1]} each")  # fmt: skip
        vector = provider.encode_video(video, frames=8)
        per_frame = provider.encode_image(frames)
    print(f"video vector {vector.shape}, norm {np.linalg.norm(vector):.4f} "
          "(mean of 8 frame embeddings, L2-normalised)")  # fmt: skip
    photos = provider.encode_image([photo(name) for name in SCENES])
    for name, v in zip(SCENES, photos, strict=True):
        print(f"cosine(video, {name} photo) = {float(vector @ v):.3f}")
    first, last = per_frame[0], per_frame[-1]
    print(f"cosine(first frame, {SCENES[0]} photo) = {float(first @ photos[0]):.3f}; "
          f"cosine(last frame, {SCENES[1]} photo) = {float(last @ photos[1]):.3f}")  # fmt: skip
    try:
        provider.encode_video(photo_path("chelsea"))
    except InputError as e:
        print(f"a still image is refused: {e}")


if __name__ == "__main__":
    main()
