"""Timestamped segments and long-form transcription: windows that seek to the last full segment.

Long audio is transcribed as openai-whisper's ``transcribe`` and transformers' long-form
``generate(..., return_timestamps=True)`` do (``_retrieve_segment``): the log-mel of the whole
input is computed once; a 30 s window starts at ``seek`` (zero-padded in mel space when shorter);
its tokens are split at each pair of consecutive timestamps into segments; when the window does
not end in a single timestamp (speech runs past the window), the text after the last complete
segment is dropped and the next window starts at that segment's end, so no phrase is cut.
Audio up to 30 s runs the same loop over the log-mel of the audio padded to 30 s, as
transformers' short-form ``generate(..., return_timestamps=True)`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decoding import SECONDS_PER_TIMESTAMP

FRAMES_PER_TIMESTAMP = 2  # one timestamp step (20 ms) = two mel frames (10 ms hop)


@dataclass(frozen=True)
class Segment:
    """A stretch of speech: start and end in seconds, its text, and how it was decoded."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...]  # timestamp tokens included, as transformers' segments hold them
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class Transcript:
    """What ``Whisper.transcribe_segments`` returns."""

    text: str
    segments: tuple[Segment, ...]
    language: str | None  # the code (``"en"``) given or detected; None for English-only models
    duration: float  # seconds of audio

    def timestamped(self) -> str:
        """``[start -> end] text`` lines (``transcribe(timestamps=True)``)."""
        return "\n".join(f"[{s.start:.2f} -> {s.end:.2f}] {s.text}" for s in self.segments)

    def as_dict(self) -> dict:
        """Text, language, duration and every segment's times, text and decoding figures."""
        keys = ("start", "end", "text", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob")  # fmt: skip
        segments = [{"id": i, **{k: getattr(s, k) for k in keys}}
                    for i, s in enumerate(self.segments)]  # fmt: skip
        return {"text": self.text, "language": self.language, "duration": self.duration,
                "segments": segments}  # fmt: skip

    def subtitles(self, fmt: str) -> str:
        """The segments as ``"srt"`` or ``"vtt"`` subtitles (empty segments left out)."""
        sep = "," if fmt == "srt" else "."
        cues = [f"{_clock(s.start, sep)} --> {_clock(s.end, sep)}\n{s.text}\n"
                for s in self.segments if s.text]  # fmt: skip
        if fmt == "srt":
            return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
        return "WEBVTT\n\n" + "\n".join(cues)


def _clock(seconds: float, sep: str) -> str:
    """``HH:MM:SS,mmm`` (srt) or ``HH:MM:SS.mmm`` (vtt)."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def split_window(tokens: list[int], ts_begin: int, window_frames: int):
    """Segments ``(start, end, tokens)`` (in timestamp steps) and the mel frames to advance.

    ``window_frames`` is how many mel frames of the window hold input.
    """
    is_ts = [t >= ts_begin for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(is_ts) - 1) if is_ts[i] and is_ts[i + 1]]
    window_steps = window_frames / FRAMES_PER_TIMESTAMP
    if not cuts:  # no complete segment: the whole window is one
        stamps = [t - ts_begin for t in tokens if t >= ts_begin]
        end = stamps[-1] if stamps and stamps[-1] != 0 else window_steps
        return [(0, end, tokens)], window_frames
    if single_ending:
        cuts.append(len(tokens))
    else:
        cuts[-1] += 1  # the last segment keeps its closing timestamp
    segments, begin = [], 0
    for i, cut in enumerate(cuts):
        part = tokens[begin:cut]
        closing = part[-2] if i == len(cuts) - 1 and not single_ending else part[-1]
        segments.append((part[0] - ts_begin, closing - ts_begin, part))
        begin = cut
    if single_ending:
        return segments, window_frames
    advance = (tokens[begin - 2] - ts_begin) * FRAMES_PER_TIMESTAMP
    return segments, advance if advance > 0 else window_frames


def seek_windows(
    mel: torch.Tensor,
    window_frames: int,
    decode: Callable[[torch.Tensor, int, int], tuple[list, int]],
    progress: Callable[[int, int], None] | None = None,
) -> list:
    """Run ``decode(window (1, n_mels, window_frames), seek, frames)`` over ``mel`` (n_mels, N).

    ``decode`` returns (its segments with absolute times, mel frames to advance). ``progress``
    is called with (frames done, total frames) after each window.
    """
    total, seek, out = mel.shape[-1], 0, []
    while seek < total:
        frames = min(total - seek, window_frames)
        window = F.pad(mel[:, seek : seek + frames], (0, window_frames - frames))
        segments, advance = decode(window[None], seek, frames)
        out.extend(segments)
        seek += advance
        if progress is not None:
            progress(min(seek, total), total)
    return out


def seconds(seek_frames: int, steps: int, hop_seconds: float) -> float:
    """Absolute time of a timestamp ``steps`` into the window that starts at ``seek_frames``."""
    return seek_frames * hop_seconds + steps * SECONDS_PER_TIMESTAMP
