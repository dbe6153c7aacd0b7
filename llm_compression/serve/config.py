"""Server settings: the model files and store to serve, and the limits that keep it up."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError

COMPUTE_CHOICES = {
    "dtype": ("float32", "bfloat16", "int8"),
    "backend": ("torch", "onnxruntime"),
    "llm_dtype": ("float32", "int8", "int4"),
    "llm_backend": ("torch", "onnxruntime"),
}


@dataclass(frozen=True)
class ServeConfig:
    """What ``llm-compression serve`` serves, and its limits.

    Every model is optional; routes whose model is missing answer 404 naming the flag to pass.
    """

    text_model: Path | None = None
    clip_model: Path | None = None
    audio_model: Path | None = None
    llm: Path | None = None
    store: Path | None = None
    api_key: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024  # a few photos or ~1 min of wav, base64-encoded
    max_inputs: int = 256  # inputs per embeddings request (OpenAI allows 2048)
    max_input_tokens: int = 8192  # tokens per text input (OpenAI's limit for its embeddings)
    request_timeout: float = 60.0  # seconds a request may wait and compute
    max_batch: int = 32  # items per model call
    max_wait: float = 0.005  # seconds the first request of a batch waits for others
    max_queue: int = 64  # requests waiting per model before 503
    max_new_tokens: int = 512  # cap of a chat completion's max_tokens
    max_k: int = 100  # results per search
    dtype: str = "float32"  # the embedding models' and Whisper's: float32, bfloat16, int8
    backend: str = "torch"  # the embedding models': torch, onnxruntime (Whisper's text: torch)
    llm_dtype: str = "float32"  # the LLM's: float32, int8, int4 (int8 / int4 on ONNX Runtime)
    llm_backend: str = "torch"  # the LLM's: torch, onnxruntime (float32 on the decoder graph)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_inputs", "max_input_tokens", "max_batch",
                     "max_queue", "max_new_tokens", "max_k"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("request_timeout", "max_wait"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty; pass a non-empty key or none")
        for name, allowed in COMPUTE_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


def with_store_models(cfg: ServeConfig) -> ServeConfig:
    """``cfg`` with the model files its store was indexed with, for each role no flag named."""
    if cfg.store is None:
        return cfg
    from ..tables.layout import remembered_models

    models = remembered_models(Path(cfg.store))
    clip = cfg.clip_model or models.get("image") or models.get("clip")
    text = cfg.text_model or models.get("text")
    return replace(cfg, text_model=None if text == clip else text, clip_model=clip,
                   audio_model=cfg.audio_model or models.get("audio"))  # fmt: skip
