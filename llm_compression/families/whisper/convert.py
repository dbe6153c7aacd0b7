"""Whisper: Hugging Face ``WhisperForConditionalGeneration`` folders and CTranslate2 ``WhisperSpec``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...config import TransformerConfig
from ...errors import ConversionError
from ..maps import HF_ACTIVATION_NAMES, Split, Target, activation, read_json, require, token_ids
from .config import WhisperConfig

_HF_ATTN = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o"}
_HF_LAYER = {
    "self_attn_layer_norm": "attn_norm",
    "encoder_attn_layer_norm": "cross_attn_norm",
    "fc1": "mlp.up",
    "fc2": "mlp.down",
    "final_layer_norm": "mlp_norm",
}


def _hf_stack(side: str) -> dict[str, Target]:
    out: dict[str, Target] = {}
    layer, ours = f"model.{side}.layers.{{}}", f"{side}.layers.{{}}"
    blocks = {"self_attn": "attn"} | ({"encoder_attn": "cross_attn"} if side == "decoder" else {})
    for hf_block, block in blocks.items():
        for hf, name in _HF_ATTN.items():
            for kind in ("weight", "bias"):
                out[f"{layer}.{hf_block}.{hf}.{kind}"] = f"{ours}.{block}.{name}.{kind}"
    for hf, name in _HF_LAYER.items():
        if name == "cross_attn_norm" and side == "encoder":
            continue
        for kind in ("weight", "bias"):
            out[f"{layer}.{hf}.{kind}"] = f"{ours}.{name}.{kind}"
    out[f"model.{side}.layer_norm.weight"] = f"{side}.final_norm.weight"
    out[f"model.{side}.layer_norm.bias"] = f"{side}.final_norm.bias"
    return out


HF_MAP: dict[str, Target] = {
    "model.encoder.conv1.weight": "encoder.conv1.weight",
    "model.encoder.conv1.bias": "encoder.conv1.bias",
    "model.encoder.conv2.weight": "encoder.conv2.weight",
    "model.encoder.conv2.bias": "encoder.conv2.bias",
    "model.encoder.embed_positions.weight": "encoder.pos_embed",
    "model.decoder.embed_tokens.weight": "decoder.token_embed.weight",
    "model.decoder.embed_positions.weight": "decoder.pos_embed",
    "proj_out.weight": None,  # tied to decoder.token_embed
    **_hf_stack("encoder"),
    **_hf_stack("decoder"),
}


def _ct2_stack(side: str) -> dict[str, Target]:
    layer, ours = f"{side}/layer_{{}}", f"{side}.layers.{{}}"
    out: dict[str, Target] = {
        # self-attention: linear_0 = q, k, v fused along dim 0 (the k bias part is zero)
        f"{layer}/self_attention/linear_0/weight": Split(
            (f"{ours}.attn.q.weight", f"{ours}.attn.k.weight", f"{ours}.attn.v.weight")
        ),
        f"{layer}/self_attention/linear_0/bias": Split(
            (f"{ours}.attn.q.bias", None, f"{ours}.attn.v.bias")
        ),
        f"{layer}/self_attention/linear_1/weight": f"{ours}.attn.o.weight",
        f"{layer}/self_attention/linear_1/bias": f"{ours}.attn.o.bias",
        f"{layer}/self_attention/layer_norm/gamma": f"{ours}.attn_norm.weight",
        f"{layer}/self_attention/layer_norm/beta": f"{ours}.attn_norm.bias",
        f"{layer}/ffn/linear_0/weight": f"{ours}.mlp.up.weight",
        f"{layer}/ffn/linear_0/bias": f"{ours}.mlp.up.bias",
        f"{layer}/ffn/linear_1/weight": f"{ours}.mlp.down.weight",
        f"{layer}/ffn/linear_1/bias": f"{ours}.mlp.down.bias",
        f"{layer}/ffn/layer_norm/gamma": f"{ours}.mlp_norm.weight",
        f"{layer}/ffn/layer_norm/beta": f"{ours}.mlp_norm.bias",
        f"{side}/layer_norm/gamma": f"{side}.final_norm.weight",
        f"{side}/layer_norm/beta": f"{side}.final_norm.bias",
        f"{side}/num_heads": None,  # config scalar
        f"{side}/position_encodings/encodings": f"{side}.pos_embed",
    }
    if side == "decoder":  # cross-attention: linear_0 = q, linear_1 = k, v fused, linear_2 = o
        out |= {
            f"{layer}/attention/linear_0/weight": f"{ours}.cross_attn.q.weight",
            f"{layer}/attention/linear_0/bias": f"{ours}.cross_attn.q.bias",
            f"{layer}/attention/linear_1/weight": Split(
                (f"{ours}.cross_attn.k.weight", f"{ours}.cross_attn.v.weight")
            ),
            f"{layer}/attention/linear_1/bias": Split((None, f"{ours}.cross_attn.v.bias")),
            f"{layer}/attention/linear_2/weight": f"{ours}.cross_attn.o.weight",
            f"{layer}/attention/linear_2/bias": f"{ours}.cross_attn.o.bias",
            f"{layer}/attention/layer_norm/gamma": f"{ours}.cross_attn_norm.weight",
            f"{layer}/attention/layer_norm/beta": f"{ours}.cross_attn_norm.bias",
        }
    return out


# Config scalars a WhisperSpec stores as variables, and the values Whisper must have.
CT2_FLAGS = {
    "decoder/activation": 3,  # CTranslate2 ActivationType.GELU
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
CT2_MAP: dict[str, Target] = {
    "encoder/conv1/weight": "encoder.conv1.weight",
    "encoder/conv1/bias": "encoder.conv1.bias",
    "encoder/conv2/weight": "encoder.conv2.weight",
    "encoder/conv2/bias": "encoder.conv2.bias",
    "decoder/embeddings/weight": "decoder.token_embed.weight",
    "decoder/alignment_heads": None,
    "decoder/alignment_layer": None,
    **dict.fromkeys(CT2_FLAGS),
    **_ct2_stack("encoder"),
    **_ct2_stack("decoder"),
}

N_FRAMES_HALF = 1500  # encoder positions: 3000 mel frames of a 30 s window, halved by conv2


def _config(
    *, dim: int, enc: tuple[int, int, int], dec: tuple[int, int, int], n_mels: int, vocab: int,
    dec_positions: int, act: str = "gelu", suppress=(), begin_suppress=(),
) -> WhisperConfig:  # fmt: skip
    """enc / dec: (layers, heads, mlp_dim)."""
    common = dict(dim=dim, k_bias=False, activation=act)
    encoder = TransformerConfig(
        **common, n_layers=enc[0], n_heads=enc[1], mlp_dim=enc[2], positions="sinusoidal",
        max_positions=N_FRAMES_HALF,
    )  # fmt: skip
    decoder = TransformerConfig(
        **common, n_layers=dec[0], n_heads=dec[1], mlp_dim=dec[2], causal=True,
        cross_attention=True, positions="learned", max_positions=dec_positions,
    )  # fmt: skip
    return WhisperConfig(
        encoder=encoder, decoder=decoder, n_mels=n_mels, vocab_size=vocab,
        suppress_tokens=tuple(suppress), begin_suppress_tokens=tuple(begin_suppress),
    )  # fmt: skip


def hf_config(cfg: dict[str, Any], folder: Path) -> WhisperConfig:
    """WhisperConfig from config.json (+ generation_config.json for the suppressed tokens)."""
    where = str(folder / "config.json")
    positions = int(cfg.get("max_source_positions", N_FRAMES_HALF))
    if positions != N_FRAMES_HALF:
        raise ConversionError(
            f"{where}: max_source_positions={positions}; only 30 s windows "
            f"({N_FRAMES_HALF} encoder positions) are supported"
        )
    gen_path = folder / "generation_config.json"
    gen = read_json(gen_path) if gen_path.is_file() else {}
    r = lambda key: int(require(cfg, key, where))  # noqa: E731
    return _config(
        dim=r("d_model"),
        enc=(r("encoder_layers"), r("encoder_attention_heads"), r("encoder_ffn_dim")),
        dec=(r("decoder_layers"), r("decoder_attention_heads"), r("decoder_ffn_dim")),
        n_mels=r("num_mel_bins"), vocab=r("vocab_size"), dec_positions=r("max_target_positions"),
        act=activation(cfg.get("activation_function", "gelu"), where),
        suppress=token_ids(gen.get("suppress_tokens", cfg.get("suppress_tokens"))),
        begin_suppress=token_ids(gen.get("begin_suppress_tokens", cfg.get("begin_suppress_tokens"))),
    )  # fmt: skip


def _ct2_layers(model: Any, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in model.shapes:
        n += 1
    if n == 0:
        raise ConversionError(f"{model.path} has no {side} layers; not a Whisper model.bin")
    return n


def ct2_config(model: Any, ct2_json: dict[str, Any]) -> WhisperConfig:
    """WhisperConfig from a WhisperSpec model.bin (dims) and its config.json (suppressed ids)."""
    for name, want in CT2_FLAGS.items():
        got = model.scalar(name, want)
        if got != want:
            raise ConversionError(
                f"{model.path}: {name} = {got}, but Whisper has {want}; this model.bin is not "
                "a standard Whisper conversion"
            )
    shapes = model.shapes
    try:
        dim, n_mels, _ = shapes["encoder/conv1/weight"]
        vocab = shapes["decoder/embeddings/weight"][0]
        dec_positions = shapes["decoder/position_encodings/encodings"][0]
        mlp = {s: shapes[f"{s}/layer_0/ffn/linear_0/weight"][0] for s in ("encoder", "decoder")}
    except KeyError as e:
        raise ConversionError(f"{model.path} lacks {e.args[0]}; not a Whisper model.bin") from e
    heads = {s: model.scalar(f"{s}/num_heads") for s in ("encoder", "decoder")}
    if None in heads.values():
        raise ConversionError(f"{model.path} lacks encoder/num_heads or decoder/num_heads")
    return _config(
        dim=dim, n_mels=n_mels, vocab=vocab, dec_positions=dec_positions,
        enc=(_ct2_layers(model, "encoder"), heads["encoder"], mlp["encoder"]),
        dec=(_ct2_layers(model, "decoder"), heads["decoder"], mlp["decoder"]),
        suppress=token_ids(ct2_json.get("suppress_ids")),
        begin_suppress=token_ids(ct2_json.get("suppress_ids_begin")),
    )  # fmt: skip


def _special_ids(files: Any) -> dict[str, int]:
    """Special token -> id from the bundled tokenizer.json (its ``added_tokens``)."""
    raw = (files or {}).get("tokenizer.json")
    if raw is None:
        raise ConversionError(
            "the weight file bundles no tokenizer.json, so Whisper's special token ids are "
            "unknown; re-convert the model with its tokenizer.json"
        )
    return {t["content"]: int(t["id"]) for t in json.loads(raw).get("added_tokens", [])}


def hf_export_config(cfg: WhisperConfig, files: Any = None) -> dict[str, Any]:
    """The ``WhisperForConditionalGeneration`` config.json of ``cfg`` (inverse of ``hf_config``);
    token ids from the bundled tokenizer.json."""
    ids = _special_ids(files)
    eot = ids.get("<|endoftext|>", cfg.vocab_size - 1)
    enc, dec = cfg.encoder, cfg.decoder
    return {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "vocab_size": cfg.vocab_size, "num_mel_bins": cfg.n_mels, "d_model": enc.dim,
        "encoder_layers": enc.n_layers, "encoder_attention_heads": enc.n_heads,
        "encoder_ffn_dim": enc.mlp_dim, "decoder_layers": dec.n_layers,
        "decoder_attention_heads": dec.n_heads, "decoder_ffn_dim": dec.mlp_dim,
        "max_source_positions": enc.max_positions, "max_target_positions": dec.max_positions,
        "activation_function": HF_ACTIVATION_NAMES[enc.activation],
        "suppress_tokens": list(cfg.suppress_tokens),
        "begin_suppress_tokens": list(cfg.begin_suppress_tokens),
        "decoder_start_token_id": ids.get("<|startoftranscript|>", eot + 1),
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "tie_word_embeddings": True, "torch_dtype": "float32",
    }  # fmt: skip
