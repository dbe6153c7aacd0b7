"""Conversion of the real packaged weights and of random-init real architectures.

References are read independently of llm_compression.convert: safetensors for MiniLM, a small
struct parser here for the CTranslate2 model.bin, transformers' GGUF loader for SmolLM2, and the
transformers models themselves for CLIP and OLMo.
"""

from __future__ import annotations

import logging
import re
import struct

import numpy as np
import pytest
import torch

from llm_compression.convert import convert
from llm_compression.families import preset
from llm_compression.loader import WeightLoader
from llm_compression.weights import packaged_minilm, packaged_smollm2, packaged_whisper_base

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


def _rename(state: dict, rules: list[tuple[str, str]], drop: str) -> dict:
    out = {}
    for name, tensor in state.items():
        if re.search(drop, name):
            continue
        for pattern, repl in rules:
            name = re.sub(pattern, repl, name)
        out[name] = tensor.detach().float()
    return out


def _assert_same(path, expected: dict) -> WeightLoader:
    loader = WeightLoader(path)
    got = loader.load_weights()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    return loader


# -- MiniLM -------------------------------------------------------------------------------------
_BERT_RULES = [
    (r"^embeddings\.word_embeddings", "embed.token"),
    (r"^embeddings\.position_embeddings", "embed.position"),
    (r"^embeddings\.token_type_embeddings", "embed.token_type"),
    (r"^embeddings\.LayerNorm", "embed.norm"),
    (r"^encoder\.layer\.", "layers."),
    (r"attention\.self\.query", "attn.q"),
    (r"attention\.self\.key", "attn.k"),
    (r"attention\.self\.value", "attn.v"),
    (r"attention\.output\.dense", "attn.o"),
    (r"attention\.output\.LayerNorm", "attn_norm"),
    (r"intermediate\.dense", "mlp.up"),
    (r"output\.dense", "mlp.down"),
    (r"output\.LayerNorm", "mlp_norm"),
]


def test_minilm_float32_exact(real_minilm_parquet):
    from safetensors.torch import load_file

    state = load_file(packaged_minilm() / "model.safetensors")
    expected = _rename(state, _BERT_RULES, r"^pooler\.|position_ids")
    loader = _assert_same(real_minilm_parquet, expected)
    cfg, ref = loader.config, preset("all-minilm-l6-v2")
    assert (cfg.pooling, cfg.normalize, cfg.max_seq_length) == ("mean", True, 256)
    assert cfg.vocab_size == ref.vocab_size
    for field in (
        "dim",
        "n_layers",
        "n_heads",
        "mlp_dim",
        "norm_eps",
        "norm_placement",
        "max_positions",
    ):
        assert getattr(cfg.encoder, field) == getattr(ref.encoder, field), field
    files = loader.metadata.files
    assert files["tokenizer.json"] == (packaged_minilm() / "tokenizer.json").read_bytes()
    assert "tokenizer_config.json" in files


@pytest.fixture(scope="module")
def minilm_sizes(tmp_path_factory):
    """MiniLM written as float16 and int8: {dtype: (path, size / float32 safetensors size)}."""
    src = packaged_minilm()
    base = (src / "model.safetensors").stat().st_size
    folder = tmp_path_factory.mktemp("minilm")
    out = {}
    for dtype in ("float16", "int8"):
        path = convert(src, folder / f"{dtype}.parquet", dtype=dtype)
        out[dtype] = (path, path.stat().st_size / base)
    logger.warning(
        "MiniLM file size / float32 safetensors (%d B): %s",
        base,
        {k: round(v[1], 4) for k, v in out.items()},
    )
    return out


def test_minilm_float16_exact_rounding_and_size(minilm_sizes):
    from safetensors.torch import load_file

    state = _rename(
        load_file(packaged_minilm() / "model.safetensors"), _BERT_RULES, r"^pooler\.|position_ids"
    )
    path, ratio = minilm_sizes["float16"]
    got = WeightLoader(path).load_weights()
    for name, tensor in state.items():  # float16 storage is exactly the float16 rounding
        assert torch.equal(got[name], tensor.half().float()), name
    assert ratio <= 0.5


def test_minilm_int8_quantizes_linear_layers(minilm_sizes):
    loader = WeightLoader(minilm_sizes["int8"][0])
    assert loader.info("layers.0.attn.q.weight").dtype == "int8"
    assert minilm_sizes["int8"][1] < 0.8 * minilm_sizes["float16"][1]


def test_minilm_int8_size_target(minilm_sizes):
    # The token embedding (51% of MiniLM's parameters) is quantized per token: 0.235x measured.
    assert WeightLoader(minilm_sizes["int8"][0]).info("embed.token.weight").dtype == "int8"
    assert minilm_sizes["int8"][1] <= 0.27


# -- Whisper base (CTranslate2) ------------------------------------------------------------------
def _read_ct2(path) -> dict[str, np.ndarray]:
    """An independent minimal CTranslate2 model.bin (v6) reader: float16 / float32 only."""
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt):
        nonlocal pos
        out = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return out[0]

    def string():
        nonlocal pos
        n = take("H")
        pos += n
        return bytes(data[pos - n : pos - 1]).decode()

    assert take("I") >= 4 and string() == "WhisperSpec"
    take("I")
    out = {}
    for _ in range(take("I")):
        name = string()
        dims = [take("I") for _ in range(take("B"))]
        code, nbytes = take("B"), take("I")
        if code in (0, 4):
            dtype = np.float32 if code == 0 else np.float16
            out[name] = np.frombuffer(data[pos : pos + nbytes], dtype).reshape(dims)
        pos += nbytes
    return out


def test_whisper_base_ct2_exact(real_whisper_base_parquet):
    src = _read_ct2(packaged_whisper_base() / "model.bin")
    loader = WeightLoader(real_whisper_base_parquet)
    got = {k: v.numpy() for k, v in loader.load_weights().items()}
    assert loader.config.encoder == preset("whisper-base").encoder
    assert loader.config.decoder == preset("whisper-base").decoder
    assert loader.config.suppress_tokens[:3] == (1, 2, 7)
    assert loader.config.begin_suppress_tokens == (220, 50257)
    assert sum(v.size for v in got.values()) == 72_593_920
    f = lambda name: src[name].astype(np.float32)  # noqa: E731
    assert np.array_equal(got["decoder.token_embed.weight"], f("decoder/embeddings/weight"))
    assert np.array_equal(got["encoder.pos_embed"], f("encoder/position_encodings/encodings"))
    assert np.array_equal(got["encoder.conv2.weight"], f("encoder/conv2/weight"))
    for side in ("encoder", "decoder"):
        for i in range(6):
            ct, ours = f"{side}/layer_{i}", f"{side}.layers.{i}"
            qkv = np.concatenate([got[f"{ours}.attn.{p}.weight"] for p in "qkv"])
            assert np.array_equal(qkv, f(f"{ct}/self_attention/linear_0/weight"))
            bias = f(f"{ct}/self_attention/linear_0/bias")
            assert not bias[512:1024].any()  # CTranslate2's zero k bias is dropped
            assert np.array_equal(got[f"{ours}.attn.v.bias"], bias[1024:])
            assert np.array_equal(got[f"{ours}.mlp.down.weight"], f(f"{ct}/ffn/linear_1/weight"))
            assert np.array_equal(got[f"{ours}.mlp_norm.weight"], f(f"{ct}/ffn/layer_norm/gamma"))
            if side == "decoder":
                kv = np.concatenate([got[f"{ours}.cross_attn.{p}.weight"] for p in "kv"])
                assert np.array_equal(kv, f(f"{ct}/attention/linear_1/weight"))
                assert np.array_equal(
                    got[f"{ours}.cross_attn.o.bias"], f(f"{ct}/attention/linear_2/bias")
                )


# -- SmolLM2 (GGUF) ------------------------------------------------------------------------------
_LLAMA_RULES = [
    (r"^model\.embed_tokens", "token_embed"),
    (r"^model\.norm", "final_norm"),
    (r"^model\.layers\.", "layers."),
    (r"self_attn\.(q|k|v)_proj", r"attn.\1"),
    (r"self_attn\.o_proj", "attn.o"),
    (r"mlp\.(gate|up|down)_proj", r"mlp.\1"),
    (r"input_layernorm", "attn_norm"),
    (r"post_attention_layernorm", "mlp_norm"),
]


@pytest.fixture(scope="module")
def smollm2_hf_state():
    """transformers' own GGUF load (dequantized to float32): ~16 s, once per module."""
    from transformers import AutoModelForCausalLM

    path = packaged_smollm2()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_smollm2_gguf_matches_transformers(real_smollm2_parquet, smollm2_hf_state):
    expected = _rename(smollm2_hf_state, _LLAMA_RULES, r"^lm_head\.")  # tied to token_embed
    loader = _assert_same(real_smollm2_parquet, expected)
    assert loader.config == preset("smollm2-135m")
    files = loader.metadata.files
    import json

    tok_cfg = json.loads(files["tokenizer_config.json"])
    assert tok_cfg["chat_template"].startswith("{% for message in messages %}")
    assert tok_cfg["eos_token"] == "<|im_end|>"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(files["tokenizer.json"].decode())
    assert tok.encode("Hello world").ids == [19556, 905]


# -- random-init real architectures --------------------------------------------------------------
_CLIP_RULES = [
    (r"^text_model\.embeddings\.token_embedding", "text.token_embed"),
    (r"^text_model\.embeddings\.position_embedding\.weight", "text.pos_embed"),
    (r"^vision_model\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding", "vision.patch_embed"),
    (r"^vision_model\.embeddings\.class_embedding", "vision.class_embed"),
    (r"^vision_model\.pre_layrnorm", "vision.pre_norm"),
    (r"^vision_model\.post_layernorm", "vision.final_norm"),
    (r"^text_model\.final_layer_norm", "text.final_norm"),
    (r"^visual_projection", "vision.proj"),
    (r"^text_projection", "text.proj"),
    (r"^(text|vision)_model\.encoder\.layers\.", r"\1.layers."),
    (r"self_attn\.(q|k|v)_proj", r"attn.\1"),
    (r"self_attn\.out_proj", "attn.o"),
    (r"layer_norm1", "attn_norm"),
    (r"layer_norm2", "mlp_norm"),
    (r"mlp\.fc1", "mlp.up"),
    (r"mlp\.fc2", "mlp.down"),
]


def test_random_clip_vit_b_32(tmp_path):
    from transformers import CLIPModel

    from llm_compression.convert.random_init import save_random_clip

    src = save_random_clip(tmp_path / "clip")
    state = CLIPModel.from_pretrained(src).state_dict()
    loader = _assert_same(
        convert(src, tmp_path / "clip.parquet", dtype="float32"),
        _rename(state, _CLIP_RULES, r"position_ids"),
    )
    assert loader.config == preset("clip-vit-b-32")
    assert sum(t.numel() for t in loader.load_weights().values()) == 151_277_313


_OLMO_RULES = _LLAMA_RULES + [
    (r"^lm_head", "lm_head"),
    (r"self_attn\.(q|k)_norm", r"attn.\1_norm"),
    (r"post_feedforward_layernorm", "mlp_norm"),
]


@pytest.mark.parametrize("version", [1, 2])
def test_random_olmo(tmp_path, version):
    """2 layers at 1024 wide (16 heads of 64), an 8k vocabulary: real layer layout, kept quick."""
    from transformers import AutoModelForCausalLM

    from llm_compression.convert.random_init import save_random_olmo

    src = save_random_olmo(
        tmp_path / "olmo", version=version, n_layers=2, hidden_size=1024, intermediate_size=4096,
        vocab_size=8192, pad_token_id=1, eos_token_id=2, bos_token_id=None,
    )  # fmt: skip
    state = AutoModelForCausalLM.from_pretrained(src).state_dict()
    rules = _OLMO_RULES
    if version == 2:  # OLMo-2's post_attention_layernorm is the attention's (sandwich) norm
        rules = [(r"post_attention_layernorm", "attn_norm"), *_OLMO_RULES]
    drop = r"^lm_head\." if version == 1 else r"^$"  # OLMo-1 shape here ties the head
    loader = _assert_same(
        convert(src, tmp_path / "o.parquet", dtype="float32"), _rename(state, rules, drop)
    )
    body = loader.config.body
    assert loader.config.family == "olmo" and body.head_dim == 64
    if version == 1:
        assert (body.norm, body.norm_eps, body.qk_norm, loader.config.tie_embeddings) == (
            "layernorm_nonparam", 1e-5, False, True,
        )  # fmt: skip
        assert not [n for n in loader.tensor_names if "norm" in n]
    else:
        assert (body.norm, body.norm_placement, body.qk_norm, body.rope_theta) == (
            "rmsnorm", "sandwich_post", True, 500000.0,
        )  # fmt: skip
    assert loader.metadata.files["tokenizer.json"].startswith(b"{")
