"""Embedding API: ``CLIPEngine`` and ``MultimodalEmbeddingProvider`` (text, image, audio, video).

See docs/provider.md. Every vector is float32 and L2-normalised; batch size and the position of an
input in its batch do not change its vector.
"""

from .batching import embed_in_batches
from .clip_engine import CLIPEngine
from .multimodal import MultimodalEmbeddingProvider
from .protocol import EmbeddingProvider, EmbeddingResult
from .similarity import cosine_matrix, l2_normalize, softmax, top_k
from .video import count_frames, frame_indices, sample_frames

__all__ = [
    "CLIPEngine",
    "EmbeddingProvider",
    "EmbeddingResult",
    "MultimodalEmbeddingProvider",
    "cosine_matrix",
    "count_frames",
    "embed_in_batches",
    "frame_indices",
    "l2_normalize",
    "sample_frames",
    "softmax",
    "top_k",
]
