"""Even frame sampling from video files with PyAV, without seeking.

Two passes over the file: the first demuxes packets (no decoding) to count the frames, the second
decodes and keeps only the chosen frames, so memory holds at most ``frames`` pictures whatever the
length of the video. Frame ``i`` of ``n`` wanted is the one at the centre of the ``i``-th of ``n``
equal spans of the stream: ``floor((i + 0.5) * total / n)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError, ModelFileNotFoundError
from ..preprocess.image import DEFAULT_MAX_PIXELS

# Demuxers that read single pictures: a still image is never turned into "video" frames.
STILL_IMAGE_FORMATS = ("image2", "image2pipe")
# Picture codecs: a one-frame stream of these (a still GIF, WebP ...) is an image, not a video.
STILL_IMAGE_CODECS = ("gif", "png", "apng", "mjpeg", "webp", "bmp", "tiff", "jpeg2000")


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise InputError(
            f"cannot read {path} as a video ({e}); pass a video file (mp4, webm, mkv, avi, mov ...)"
        ) from e
    fmt = container.format.name
    if fmt in STILL_IMAGE_FORMATS or fmt.endswith("_pipe"):
        container.close()
        raise InputError(
            f"{path} is a still image (format {fmt!r}), not a video; embed it with encode_image"
        )
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream (format {fmt!r}); pass a file with video")
    return container


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames in the first video stream, counted from its packets (nothing is decoded)."""
    import av

    p = _check_path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as e:
        raise InputError(
            f"{p} is damaged: {e}; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        ) from e
    finally:
        container.close()


def frame_indices(total: int, frames: int) -> np.ndarray:
    """``min(frames, total)`` increasing frame indices spread evenly over ``total`` frames."""
    n = min(frames, total)
    return np.floor((np.arange(n) + 0.5) * total / n).astype(np.int64)


def sample_frames(
    path: str | os.PathLike, frames: int = 16, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Image.Image]:
    """``frames`` RGB frames spread evenly over the video at ``path`` (all of them if it has fewer).

    Frames larger than ``max_pixels`` (width x height, read from the stream header) are refused
    before any is decoded, as `preprocess.image.load_image` refuses such images.

    Raises
    ------
    ModelFileNotFoundError
        The file does not exist.
    InputError
        ``frames`` < 1, the file is not a readable video, has no video stream or no frames, is
        a still image, or its frames have more than ``max_pixels`` pixels.
    """
    import av

    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames must be a positive integer, got {frames!r}")
    p = _check_path(path)
    total, (codec, width, height) = count_frames(p), _stream_info(p)
    if width * height > max_pixels:
        raise InputError(
            f"{p} has {width}x{height} = {width * height:,} pixel frames, over the limit of "
            f"{max_pixels:,}; downscale the video (ffmpeg -i in -vf scale=1280:-2 out.mp4)"
        )
    if total == 0:
        raise InputError(f"{p} has a video stream without frames; pass a non-empty video")
    if total == 1 and codec in STILL_IMAGE_CODECS:
        raise InputError(
            f"{p} is a still image (one {codec!r} frame), not a video; embed it with encode_image"
        )
    wanted = frame_indices(total, frames)
    picked: list[Image.Image] = []
    container = _open(p)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        position = 0
        for index, frame in enumerate(container.decode(stream)):
            if index == wanted[position]:
                picked.append(frame.to_image().convert("RGB"))
                position += 1
                if position == len(wanted):
                    break
    except av.error.FFmpegError as e:
        raise InputError(f"{p} could not be decoded: {e}; re-encode it") from e
    finally:
        container.close()
    if not picked:
        raise InputError(f"no frame of {p} could be decoded; re-encode the video")
    return picked


def _stream_info(path: Path) -> tuple[str, int, int]:
    """Codec name, frame width and height of the first video stream (from its header)."""
    container = _open(path)
    try:
        context = container.streams.video[0].codec_context
        return context.name, int(context.width or 0), int(context.height or 0)
    finally:
        container.close()


def _check_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"a video is given as a file path, got {type(path).__name__}")
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise ModelFileNotFoundError(f"video file not found: {p}; check the path")
    return p
