"""Video frame sampling with PyAV on videos made on the fly."""

from __future__ import annotations

import numpy as np
import pytest
from provider_helpers import make_video, photo, photo_path, solid_frames

from llm_compression.errors import InputError, ModelFileNotFoundError
from llm_compression.provider import count_frames, frame_indices, sample_frames


def test_frame_indices_even_and_clipped():
    np.testing.assert_array_equal(frame_indices(100, 4), [12, 37, 62, 87])
    np.testing.assert_array_equal(frame_indices(3, 16), [0, 1, 2])
    idx = frame_indices(1000, 16)
    assert len(set(idx.tolist())) == 16 and idx[0] >= 0 and idx[-1] < 1000


@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("libvpx-vp9", ".webm")])
def test_samples_evenly_across_the_video(tmp_path, codec, suffix):
    path = make_video(tmp_path / f"v{suffix}", solid_frames(12), codec=codec)
    assert count_frames(path) == 12
    frames = sample_frames(path, 4)
    assert len(frames) == 4 and all(f.mode == "RGB" for f in frames)
    levels = [float(np.asarray(f).mean()) for f in frames]
    expected = [10 + 20 * i for i in frame_indices(12, 4)]  # frames 1, 4, 7, 10
    np.testing.assert_allclose(levels, expected, atol=4)


def test_fewer_frames_than_requested_uses_all(tmp_path):
    path = make_video(tmp_path / "short.mp4", solid_frames(3))
    frames = sample_frames(path, 16)
    assert len(frames) == 3
    levels = [float(np.asarray(f).mean()) for f in frames]
    np.testing.assert_allclose(levels, [10, 30, 50], atol=4)


@pytest.mark.parametrize("name", ["chelsea", "rocket"])
def test_still_image_is_refused(name):
    with pytest.raises(InputError, match="still image"):
        sample_frames(photo_path(name), 4)


def test_single_frame_gif_is_a_still_but_animated_gif_is_a_video(tmp_path):
    from PIL import Image

    still = tmp_path / "still.gif"
    Image.fromarray(photo("coffee")[:64, :64]).save(still)
    with pytest.raises(InputError, match="still image"):
        sample_frames(still, 4)
    animated = tmp_path / "animated.gif"
    frames = [Image.fromarray(f) for f in solid_frames(5, (32, 32))]
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    assert len(sample_frames(animated, 4)) == 4


def test_bad_video_inputs(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="video file not found"):
        sample_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 10)
    with pytest.raises(InputError):
        sample_frames(junk)
    with pytest.raises(InputError, match="frames must be a positive integer"):
        sample_frames(junk, 0)
    with pytest.raises(InputError, match="file path"):
        sample_frames(np.zeros((4, 4, 3)))
