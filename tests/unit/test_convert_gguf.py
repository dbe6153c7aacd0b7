"""GGUF conversion: a tiny Llama written with gguf.GGUFWriter (F32 tensors, llama.cpp's q/k
permutation applied here as convert_hf_to_gguf.py does) must come back as the HF tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hf_tiny import CHAT_TEMPLATE, tiny_causal_lm, tiny_tokenizer_files

from llm_compression.convert import convert
from llm_compression.errors import ConversionError, UnsupportedFamilyError
from llm_compression.families.llama import unpermute_rotary
from llm_compression.loader import WeightLoader

_TENSORS = {  # HF per-layer suffix -> GGUF per-layer suffix
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(path, hf, *, tie: bool, arch: str = "llama") -> None:
    import gguf

    cfg = hf.config
    tok = json.loads(tiny_tokenizer_files()["tokenizer.json"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [f"<pad{i}>" for i in range(cfg.vocab_size - len(vocab))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(500.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        for src, dst in _TENSORS.items():
            value = state[f"model.layers.{i}.{src}"]
            if dst == "attn_q.weight":
                value = permute(value, cfg.num_attention_heads)
            elif dst == "attn_k.weight":
                value = permute(value, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{dst}", np.ascontiguousarray(value))
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not tie:
        w.add_tensor("output.weight", state["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tie", [True, False])
def test_gguf_llama_exact(tmp_path, tie):
    hf, cfg, state = tiny_causal_lm("llama", tie=tie, vocab_size=320)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, hf, tie=tie)
    loader = WeightLoader(convert(path, tmp_path / "m.parquet", dtype="float32"))
    got = loader.load_weights()
    assert sorted(got) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(got[name], tensor), name
    assert loader.config == cfg
    files = loader.metadata.files
    tok_cfg = json.loads(files["tokenizer_config.json"])
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert tok_cfg["model_max_length"] == 128
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(files["tokenizer.json"].decode())
    ref = Tokenizer.from_str(tiny_tokenizer_files()["tokenizer.json"].decode())
    text = "The quick brown fox. Hello world!"
    assert tok.encode(text).ids == ref.encode(text).ids
    assert list(loader.metadata.sources) == ["tiny.gguf"]


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for heads, hd in ((4, 8), (3, 64), (1, 2)):
        w = rng.standard_normal((heads * hd, 5)).astype(np.float32)
        assert np.array_equal(unpermute_rotary(permute(w, heads), heads), w)
        b = w[:, 0].copy()
        assert np.array_equal(unpermute_rotary(permute(b, heads), heads), b)
    with pytest.raises(ConversionError, match="even size"):
        unpermute_rotary(np.zeros((6, 2), np.float32), 2)


def test_gguf_other_architecture_and_family_mismatch(tmp_path):
    hf, _, _ = tiny_causal_lm("llama", vocab_size=320)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, hf, tie=True, arch="gpt2")
    with pytest.raises(UnsupportedFamilyError, match="'gpt2'.*supported families"):
        convert(path, tmp_path / "m.parquet")
    write_tiny_gguf(path, hf, tie=True)
    with pytest.raises(ConversionError, match="'llama' checkpoint.*family='olmo'"):
        convert(tmp_path, tmp_path / "m.parquet", family="olmo")  # a folder with one GGUF
