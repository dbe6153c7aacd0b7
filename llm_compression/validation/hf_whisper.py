"""An HF ``WhisperForConditionalGeneration`` built from a CTranslate2 Whisper folder.

No Hugging Face folder exists for the packaged Whisper checkpoints, so the reference is assembled
from the same CTranslate2 tensors: the converter's CT2 reader and its declarative CT2 map give the
canonical tensors, and the converter's HF map, inverted by :func:`invert_map`, names them as
transformers expects. The HF config comes from our WhisperConfig; the generation config
(language and task tokens) from the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..convert.ct2 import CT2Model
from ..convert.mapping import Split, Target, build_plan, to_upstream
from ..convert.readers import read_json
from ..errors import ConversionError
from ..families import WhisperConfig
from ..families.whisper import convert as whisper_convert

_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3}|haw|jw)\|>")


def invert_map(weight_map: Mapping[str, Target]) -> list[tuple[re.Pattern[str], str]]:
    """(canonical-name pattern, upstream template) pairs of a declarative map.

    ``{}`` (the layer index) becomes a capture group on the canonical side; dropped names (None)
    have no inverse. Split targets are not invertible one to one and raise ConversionError.
    """
    pairs = []
    for upstream, target in weight_map.items():
        if target is None:
            continue
        if isinstance(target, Split):
            raise ConversionError(f"{upstream} maps to a fused Split; it cannot be inverted")
        pattern = re.escape(target).replace(re.escape("{}"), r"(\d+)")
        pairs.append((re.compile(pattern), upstream))
    return pairs


def rename(
    tensors: Mapping[str, np.ndarray], weight_map: Mapping[str, Target]
) -> dict[str, np.ndarray]:
    """Canonical-name ``tensors`` under the upstream names of ``weight_map`` (what export does)."""
    return to_upstream(tensors, weight_map, source="the canonical Whisper tensors")


def canonical_tensors(model_bin: Path) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Our WhisperConfig and the canonical float32 tensors of a CT2 Whisper model.bin."""
    model = CT2Model(model_bin)
    config_path = model_bin.parent / "config.json"
    ct2_json = read_json(config_path) if config_path.is_file() else {}
    config = whisper_convert.ct2_config(model, ct2_json)
    plan = build_plan(model.shapes, model.load, whisper_convert.CT2_MAP, source=str(model_bin))
    return config, {name: item.load() for name, item in plan.items()}


def hf_config(cfg: WhisperConfig, tokenizer):
    """transformers ``WhisperConfig`` of our config (token ids from ``tokenizer``)."""
    from transformers import WhisperConfig as HFWhisperConfig

    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    enc, dec = cfg.encoder, cfg.decoder
    return HFWhisperConfig(
        vocab_size=cfg.vocab_size, num_mel_bins=cfg.n_mels, d_model=enc.dim,
        encoder_layers=enc.n_layers, encoder_attention_heads=enc.n_heads,
        encoder_ffn_dim=enc.mlp_dim, decoder_layers=dec.n_layers,
        decoder_attention_heads=dec.n_heads, decoder_ffn_dim=dec.mlp_dim,
        max_source_positions=enc.max_positions, max_target_positions=dec.max_positions,
        activation_function="gelu", suppress_tokens=list(cfg.suppress_tokens),
        begin_suppress_tokens=list(cfg.begin_suppress_tokens), decoder_start_token_id=sot,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, tie_word_embeddings=True,
    )  # fmt: skip


def _generation_config(model, cfg: WhisperConfig, tokenizer) -> None:
    ids = tokenizer.convert_tokens_to_ids
    gen = model.generation_config
    gen.decoder_start_token_id = ids("<|startoftranscript|>")
    gen.eos_token_id = gen.pad_token_id = ids("<|endoftext|>")
    gen.no_timestamps_token_id = ids("<|notimestamps|>")
    gen.suppress_tokens = list(cfg.suppress_tokens)
    gen.begin_suppress_tokens = list(cfg.begin_suppress_tokens)
    gen.max_length = cfg.decoder.max_positions
    gen.forced_decoder_ids = None
    gen.is_multilingual = cfg.multilingual
    if cfg.multilingual:
        sot, translate = ids("<|startoftranscript|>"), ids("<|translate|>")
        vocab = tokenizer.get_vocab()
        gen.lang_to_id = {
            t: i for t, i in vocab.items() if sot < i < translate and _LANGUAGE_TOKEN.fullmatch(t)
        }
        gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": translate}


def whisper_from_ct2(model_bin: Path, tokenizer):
    """``(WhisperForConditionalGeneration, our WhisperConfig)`` from a CT2 model.bin, float32."""
    import torch
    from transformers import WhisperForConditionalGeneration

    cfg, tensors = canonical_tensors(model_bin)
    state = {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in rename(tensors, whisper_convert.HF_MAP).items()
    }
    model = WhisperForConditionalGeneration(hf_config(cfg, tokenizer)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise ConversionError(
            f"the HF Whisper built from {model_bin} lacks {missing[:8]} and has no place for "
            f"{unexpected[:8]}; the inverted HF map and transformers disagree"
        )
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    _generation_config(model, cfg, tokenizer)
    return model, cfg
