"""Whisper's config: conv stem + encoder over log-mel frames, decoder with cross-attention."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import TransformerConfig, check_positive
from ...errors import ConfigError


@dataclass(frozen=True)
class WhisperConfig:
    """Whisper: conv stem + encoder over log-mel frames, decoder with cross-attention."""

    encoder: TransformerConfig
    decoder: TransformerConfig
    n_mels: int = 80
    vocab_size: int = 51865
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    family: str = field(default="whisper", init=False)

    def __post_init__(self) -> None:
        check_positive("WhisperConfig", n_mels=self.n_mels, vocab_size=self.vocab_size)
        if not self.decoder.cross_attention:
            raise ConfigError("WhisperConfig.decoder must have cross_attention=True")
        if self.encoder.max_positions != self.n_frames // 2:
            raise ConfigError(
                f"encoder.max_positions must be n_frames/2 = {self.n_frames // 2} "
                f"(the conv stem halves {self.n_frames} frames), got {self.encoder.max_positions}"
            )

    @property
    def n_samples(self) -> int:  # 480000: samples in one 30 s window
        return self.chunk_seconds * self.sample_rate

    @property
    def n_frames(self) -> int:  # 3000: mel frames in one window (one per hop)
        return self.n_samples // self.hop_length

    @property
    def multilingual(self) -> bool:
        return self.vocab_size >= 51865


def whisper_preset(dim: int, layers: int, heads: int, vocab: int) -> WhisperConfig:
    common = dict(dim=dim, n_layers=layers, n_heads=heads, mlp_dim=4 * dim, k_bias=False)
    encoder = TransformerConfig(**common, positions="sinusoidal", max_positions=1500)
    decoder = TransformerConfig(
        **common, causal=True, cross_attention=True, positions="learned", max_positions=448
    )
    return WhisperConfig(encoder=encoder, decoder=decoder, vocab_size=vocab)
