"""Whisper conversion: a tiny HF Whisper, and the same weights as a CTranslate2 model.bin written
by a small writer here (fused q/k/v, zero k bias, fp16 / int8 variables, config scalars)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import torch

from llm_compression.convert import convert
from llm_compression.errors import ConversionError, UnsupportedFamilyError
from llm_compression.loader import WeightLoader

N_MELS, DIM, VOCAB = 8, 32, 100

# HF name -> canonical name, written independently of llm_compression.convert (applied in order).
_RULES = [
    (r"^model\.", ""),
    (r"embed_positions\.weight$", "pos_embed"),
    (r"embed_tokens", "token_embed"),
    (r"self_attn_layer_norm", "attn_norm"),
    (r"encoder_attn_layer_norm", "cross_attn_norm"),
    (r"final_layer_norm", "mlp_norm"),
    (r"encoder_attn\.", "cross_attn."),
    (r"self_attn\.", "attn."),
    (r"\.(q|k|v)_proj\.", r".\1."),
    (r"\.out_proj\.", ".o."),
    (r"\.fc1\.", ".mlp.up."),
    (r"\.fc2\.", ".mlp.down."),
    (r"^(en|de)coder\.layer_norm\.", r"\1coder.final_norm."),
]


def _canonical(state: dict) -> dict:
    out = {}
    for name, tensor in state.items():
        if name == "proj_out.weight":
            continue
        for pattern, repl in _RULES:
            name = re.sub(pattern, repl, name)
        out[name] = tensor.detach().clone()
    return out


@pytest.fixture(scope="module")
def tiny_whisper():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=N_MELS, d_model=DIM, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=16, pad_token_id=99, bos_token_id=98,
        eos_token_id=98, decoder_start_token_id=97, suppress_tokens=None, begin_suppress_tokens=None,
    )  # fmt: skip
    hf = tf.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms (HF initialises them to 0 / 1)
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return hf


def _tokenizer_json() -> bytes:
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return Tokenizer(models.WordLevel(vocab, unk_token="t0")).to_str().encode()


def test_hf_whisper_exact(tmp_path, tiny_whisper):
    src = tmp_path / "hf"
    tiny_whisper.save_pretrained(src)
    (src / "tokenizer.json").write_bytes(_tokenizer_json())
    gen = json.loads((src / "generation_config.json").read_text())
    gen.update(suppress_tokens=[1, 2, 7], begin_suppress_tokens=[5, 98])
    (src / "generation_config.json").write_text(json.dumps(gen))
    loader = WeightLoader(convert(src, tmp_path / "w.parquet", dtype="float32"))
    expected = _canonical(tiny_whisper.state_dict())
    got = loader.load_weights()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    cfg = loader.config
    assert (cfg.n_mels, cfg.vocab_size, cfg.encoder.dim, cfg.decoder.max_positions) == (
        8,
        100,
        32,
        16,
    )
    assert cfg.suppress_tokens == (1, 2, 7) and cfg.begin_suppress_tokens == (5, 98)
    assert not cfg.encoder.k_bias and cfg.decoder.cross_attention
    assert "generation_config.json" in loader.metadata.files


# -- a tiny CTranslate2 writer (binary version 6) ------------------------------------------------
_CODES = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path, variables: dict, *, spec="WhisperSpec", version=6, aliases=None) -> None:
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name, array in variables.items():
        array = np.ascontiguousarray(array)
        out += [_string(name), struct.pack("<B", array.ndim)]
        out += [struct.pack("<I", d) for d in array.shape]
        out += [struct.pack("<BI", _CODES[array.dtype.name], array.nbytes), array.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


def _ct2_variables(state: dict, k_bias_value: float = 0.0) -> dict:
    s = {k: v.detach().numpy() for k, v in state.items()}
    h = lambda a: a.astype(np.float16)  # noqa: E731  CTranslate2 Whisper stores float16
    out = {
        "decoder/activation": np.array(3, np.int8),
        "decoder/pre_norm": np.array(1, np.int8),
        "decoder/alibi": np.array(0, np.int8),
        "decoder/num_heads": np.array(4, np.int16),
        "encoder/num_heads": np.array(4, np.int16),
        "decoder/embeddings/weight": h(s["model.decoder.embed_tokens.weight"]),
        "decoder/position_encodings/encodings": h(s["model.decoder.embed_positions.weight"]),
        "encoder/position_encodings/encodings": h(s["model.encoder.embed_positions.weight"]),
    }
    for side in ("encoder", "decoder"):
        for conv in ("conv1", "conv2"):
            for kind in ("weight", "bias"):
                if side == "encoder":
                    out[f"encoder/{conv}/{kind}"] = h(s[f"model.encoder.{conv}.{kind}"])
        for kind, ours in (("weight", "gamma"), ("bias", "beta")):
            out[f"{side}/layer_norm/{ours}"] = h(s[f"model.{side}.layer_norm.{kind}"])
        for i in range(2):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            a = f"{hf}.self_attn"
            out[f"{ct}/self_attention/linear_0/weight"] = h(np.concatenate(
                [s[f"{a}.q_proj.weight"], s[f"{a}.k_proj.weight"], s[f"{a}.v_proj.weight"]]
            ))  # fmt: skip
            out[f"{ct}/self_attention/linear_0/bias"] = h(np.concatenate(
                [s[f"{a}.q_proj.bias"], np.full(DIM, k_bias_value, np.float32), s[f"{a}.v_proj.bias"]]
            ))  # fmt: skip
            out[f"{ct}/self_attention/linear_1/weight"] = h(s[f"{a}.out_proj.weight"])
            out[f"{ct}/self_attention/linear_1/bias"] = h(s[f"{a}.out_proj.bias"])
            for kind, ours in (("weight", "gamma"), ("bias", "beta")):
                out[f"{ct}/self_attention/layer_norm/{ours}"] = h(
                    s[f"{hf}.self_attn_layer_norm.{kind}"]
                )
                out[f"{ct}/ffn/layer_norm/{ours}"] = h(s[f"{hf}.final_layer_norm.{kind}"])
                out[f"{ct}/ffn/linear_0/{kind}"] = h(s[f"{hf}.fc1.{kind}"])
                out[f"{ct}/ffn/linear_1/{kind}"] = h(s[f"{hf}.fc2.{kind}"])
            if side == "decoder":
                c = f"{hf}.encoder_attn"
                out[f"{ct}/attention/linear_0/weight"] = h(s[f"{c}.q_proj.weight"])
                out[f"{ct}/attention/linear_0/bias"] = h(s[f"{c}.q_proj.bias"])
                out[f"{ct}/attention/linear_1/weight"] = h(
                    np.concatenate([s[f"{c}.k_proj.weight"], s[f"{c}.v_proj.weight"]])
                )
                out[f"{ct}/attention/linear_1/bias"] = h(
                    np.concatenate([np.zeros(DIM, np.float32), s[f"{c}.v_proj.bias"]])
                )
                out[f"{ct}/attention/linear_2/weight"] = h(s[f"{c}.out_proj.weight"])
                out[f"{ct}/attention/linear_2/bias"] = h(s[f"{c}.out_proj.bias"])
                for kind, ours in (("weight", "gamma"), ("bias", "beta")):
                    out[f"{ct}/attention/layer_norm/{ours}"] = h(
                        s[f"{hf}.encoder_attn_layer_norm.{kind}"]
                    )
    return out


def _ct2_folder(tmp_path, variables, **kwargs):
    folder = tmp_path / "ct2"
    folder.mkdir()
    write_ct2(folder / "model.bin", variables, **kwargs)
    (folder / "tokenizer.json").write_bytes(_tokenizer_json())
    (folder / "config.json").write_text(
        json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [98], "lang_ids": []})
    )
    return folder


def test_ct2_whisper_exact_vs_float16_source(tmp_path, tiny_whisper):
    state = tiny_whisper.state_dict()
    variables = _ct2_variables(state)
    # one int8 weight with CTranslate2's per-row scale: value = int8 / scale
    q = np.resize(np.arange(-100, 100, dtype=np.int8), (64, DIM))
    scale = np.linspace(50, 200, 64, dtype=np.float32)
    variables["encoder/layer_1/ffn/linear_0/weight"] = q
    variables["encoder/layer_1/ffn/linear_0/weight_scale"] = scale
    folder = _ct2_folder(
        tmp_path, variables, aliases={"decoder/projection/weight": "decoder/embeddings/weight"}
    )
    loader = WeightLoader(convert(folder, tmp_path / "w.parquet", dtype="float32"))
    expected = {k: v.to(torch.float16).float() for k, v in _canonical(state).items()}
    expected["encoder.layers.1.mlp.up.weight"] = torch.from_numpy(
        q.astype(np.float32) / scale[:, None]
    )
    got = loader.load_weights()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    cfg = loader.config
    assert (cfg.suppress_tokens, cfg.begin_suppress_tokens) == ((1, 2), (98,))
    assert (cfg.encoder.n_heads, cfg.encoder.n_layers, cfg.encoder.mlp_dim, cfg.n_mels) == (
        4,
        2,
        64,
        8,
    )
    assert loader.metadata.files["tokenizer.json"] == _tokenizer_json()
    assert {"model.bin", "config.json", "tokenizer.json"} <= set(loader.metadata.sources)
    # the model.bin path itself works too
    path = convert(folder / "model.bin", tmp_path / "w2.parquet", dtype="float32")
    assert WeightLoader(path).tensor_names == loader.tensor_names


def test_ct2_nonzero_k_bias_is_refused(tmp_path, tiny_whisper):
    folder = _ct2_folder(tmp_path, _ct2_variables(tiny_whisper.state_dict(), k_bias_value=0.5))
    with pytest.raises(ConversionError, match="must be all zeros"):
        convert(folder, tmp_path / "w.parquet")
    assert not (tmp_path / "w.parquet").exists()
    assert not list(tmp_path.glob(".w.parquet*"))


def test_ct2_other_spec_and_flags(tmp_path, tiny_whisper):
    variables = _ct2_variables(tiny_whisper.state_dict())
    folder = _ct2_folder(tmp_path, variables, spec="TransformerSpec")
    with pytest.raises(UnsupportedFamilyError, match="TransformerSpec.*supported families"):
        convert(folder, tmp_path / "w.parquet")
    write_ct2(folder / "model.bin", {**variables, "decoder/activation": np.array(1, np.int8)})
    with pytest.raises(ConversionError, match="decoder/activation = 1"):
        convert(folder, tmp_path / "w.parquet")
    write_ct2(folder / "model.bin", variables, spec="WhisperSpec")
    with pytest.raises(ConversionError, match="'whisper' checkpoint.*family='llama'"):
        convert(folder, tmp_path / "w.parquet", family="llama")


def test_ct2_truncated_file(tmp_path, tiny_whisper):
    folder = _ct2_folder(tmp_path, _ct2_variables(tiny_whisper.state_dict()))
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert(folder, tmp_path / "w.parquet")
