"""Whisper: conv stem + encoder over log-mel frames, decoder with cross-attention, transcription.

``config`` (WhisperConfig, presets), ``model`` (the network, embeddings, transcription),
``decoding`` (prompts, logit rules, timestamps) and ``convert`` (Hugging Face and CTranslate2 maps).
"""

from __future__ import annotations

from ..spec import Family, Source
from .config import WhisperConfig, whisper_preset
from .convert import CT2_MAP, HF_MAP, ct2_config, hf_config, hf_export_config
from .model import Whisper

__all__ = ["FAMILY", "Whisper", "WhisperConfig"]

FAMILY = Family(
    name="whisper",
    config_class=WhisperConfig,
    model_class=Whisper,
    describes="a Whisper weight file",
    provider_argument="audio_model",
    modalities=("audio",),
    tasks=("transcribe",),
    embedding_dim=lambda cfg: cfg.encoder.dim,
    hf=Source(
        names=("whisper",),
        architectures={
            "WhisperForConditionalGeneration": "whisper",
            "WhisperModel": "whisper",
        },
        config=hf_config,
        name_map=lambda cfg: HF_MAP,
        export_config=hf_export_config,
    ),
    ct2=Source(names=("WhisperSpec",), config=ct2_config, name_map=lambda cfg: CT2_MAP),
    presets={
        "whisper-base": whisper_preset(512, 6, 8, 51865),
        "whisper-tiny.en": whisper_preset(384, 4, 6, 51864),
    },
)
