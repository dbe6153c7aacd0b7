"""Tiny random HuggingFace models and their weights under canonical names, for parity tests.

Tests only (``transformers`` never enters the runtime path). Each ``tiny_*`` returns
``(hf_model, our_config, canonical_state_dict)``; the canonical names follow docs/naming.md. The name
maps here are written independently of ``llm_compression.convert`` so the two check each other.
"""

from __future__ import annotations

import re

import torch

from llm_compression.config import TransformerConfig
from llm_compression.families import BertConfig, CausalLMConfig, CLIPConfig

_BODY = {  # HF per-layer suffix -> canonical per-layer suffix, by architecture
    "llama": {
        "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
        "self_attn.o_proj": "attn.o", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "mlp_norm", "mlp.gate_proj": "mlp.gate",
        "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down",
    },
    "olmo2": {
        "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
        "self_attn.o_proj": "attn.o", "self_attn.q_norm": "attn.q_norm",
        "self_attn.k_norm": "attn.k_norm", "post_attention_layernorm": "attn_norm",
        "post_feedforward_layernorm": "mlp_norm", "mlp.gate_proj": "mlp.gate",
        "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down",
    },
    "clip": {
        "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
        "self_attn.out_proj": "attn.o", "layer_norm1": "attn_norm", "layer_norm2": "mlp_norm",
        "mlp.fc1": "mlp.up", "mlp.fc2": "mlp.down",
    },
    "bert": {
        "attention.self.query": "attn.q", "attention.self.key": "attn.k",
        "attention.self.value": "attn.v", "attention.output.dense": "attn.o",
        "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "mlp.up",
        "output.dense": "mlp.down", "output.LayerNorm": "mlp_norm",
    },
}  # fmt: skip


def _rename(state: dict, layer_prefix: str, arch: str, out_prefix: str, extra: dict) -> dict:
    """Map a HF state dict: ``extra`` exact names, layer names via ``_BODY[arch]``; others dropped."""
    out = {}
    pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.(.+)\.(weight|bias)$")
    for name, tensor in state.items():
        if name in extra:
            out[extra[name]] = tensor.detach().clone()
            continue
        m = pattern.match(name)
        if m and m.group(2) in _BODY[arch]:
            new = f"{out_prefix}layers.{m.group(1)}.{_BODY[arch][m.group(2)]}.{m.group(3)}"
            out[new] = tensor.detach().clone()
    return out


def _seed_model(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-trivial values for every parameter (HF inits norms to 1/0 and biases to 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            scale = 0.02 if p.ndim >= 2 else 0.1
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(noise + 1.0 if "norm" in name.lower() and name.endswith("weight") else noise)
    return model.eval()


def tiny_causal_lm(
    arch: str = "llama",
    *,
    seed: int = 0,
    tie: bool = False,
    gqa: bool = True,
    vocab_size: int = 97,
    heads: int = 4,
    width: int = 32,
):
    """A tiny Llama (``arch='llama'``), OLMo-1 (``'olmo'``) or OLMo-2 (``'olmo2'``) causal LM
    of ``width`` (MLP twice as wide) and ``heads`` query heads (half as many key/value heads with
    ``gqa``)."""
    import transformers as tf

    kv_heads = heads // 2 if gqa else heads

    common = dict(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
        rope_theta=500.0, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    body = dict(
        dim=width, n_layers=2, n_heads=heads, n_kv_heads=kv_heads, mlp_dim=2 * width,
        activation="swiglu", causal=True, positions="rotary", max_positions=128, rope_theta=500.0,
        qkv_bias=False, k_bias=False, out_bias=False, mlp_bias=False,
    )  # fmt: skip
    if arch == "llama":
        hf = tf.LlamaForCausalLM(tf.LlamaConfig(**common, rms_norm_eps=1e-6))
        body.update(norm="rmsnorm", norm_eps=1e-6)
    elif arch == "olmo":
        hf = tf.OlmoForCausalLM(tf.OlmoConfig(**common, clip_qkv=0.05))
        body.update(norm="layernorm_nonparam", norm_eps=1e-5, clip_qkv=0.05)
    elif arch == "olmo2":
        hf = tf.Olmo2ForCausalLM(tf.Olmo2Config(**common, rms_norm_eps=1e-6))
        body.update(norm="rmsnorm", norm_eps=1e-6, norm_placement="sandwich_post", qk_norm=True)
    else:
        raise ValueError(arch)
    _seed_model(hf, seed)
    cfg = CausalLMConfig(
        body=TransformerConfig(**body), vocab_size=vocab_size, tie_embeddings=tie, bos_token_id=1,
        eos_token_ids=(2,), pad_token_id=0, family="llama" if arch == "llama" else "olmo",
    )  # fmt: skip
    extra = {
        "model.embed_tokens.weight": "token_embed.weight",
        "model.norm.weight": "final_norm.weight",
    }
    if not tie:
        extra["lm_head.weight"] = "lm_head.weight"
    layers = "model.layers."
    state = _rename(hf.state_dict(), layers, "llama" if arch == "olmo" else arch, "", extra)
    return hf, cfg, state


def tiny_bert(*, seed: int = 0, max_seq_length: int = 24):
    """A tiny BertModel and the matching mean-pooling ``BertConfig``."""
    import transformers as tf

    hf_cfg = tf.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12,
    )  # fmt: skip
    hf = _seed_model(tf.BertModel(hf_cfg, add_pooling_layer=False), seed)
    enc = TransformerConfig(
        dim=32, n_layers=2, n_heads=4, mlp_dim=64, norm_eps=1e-12, norm_placement="post",
        max_positions=40, final_norm=False,
    )  # fmt: skip
    cfg = BertConfig(encoder=enc, vocab_size=50, max_seq_length=max_seq_length)
    e = "embeddings."
    extra = {
        e + "word_embeddings.weight": "embed.token.weight",
        e + "position_embeddings.weight": "embed.position.weight",
        e + "token_type_embeddings.weight": "embed.token_type.weight",
        e + "LayerNorm.weight": "embed.norm.weight",
        e + "LayerNorm.bias": "embed.norm.bias",
    }
    return hf, cfg, _rename(hf.state_dict(), "encoder.layer.", "bert", "", extra)


def tiny_clip(*, seed: int = 0, eos_token_id: int = 49):
    """A tiny CLIPModel (image 32, patch 8, vocab 50) and the matching ``CLIPConfig``."""
    import transformers as tf

    text = dict(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos_token_id,
    )  # fmt: skip
    vision = dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8,
    )  # fmt: skip
    hf = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    _seed_model(hf, seed)
    cfg = CLIPConfig(
        vision=TransformerConfig(
            dim=48, n_layers=2, n_heads=4, mlp_dim=96, activation="quick_gelu", max_positions=17
        ),
        text=TransformerConfig(
            dim=32, n_layers=2, n_heads=4, mlp_dim=64, activation="quick_gelu", causal=True,
            max_positions=16,
        ),
        image_size=32, patch_size=8, projection_dim=24, vocab_size=50,
        # as families.clip.hf_config converts it: a legacy eos_token_id=2 means the end token,
        # the highest id, where HF pools at argmax(ids)
        eos_token_id=49 if eos_token_id == 2 else eos_token_id,
    )  # fmt: skip
    state = hf.state_dict()
    t, v = "text_model.", "vision_model."
    extra = {
        t + "embeddings.token_embedding.weight": "text.token_embed.weight",
        t + "embeddings.position_embedding.weight": "text.pos_embed",
        t + "final_layer_norm.weight": "text.final_norm.weight",
        t + "final_layer_norm.bias": "text.final_norm.bias",
        v + "embeddings.class_embedding": "vision.class_embed",
        v + "embeddings.patch_embedding.weight": "vision.patch_embed.weight",
        v + "embeddings.position_embedding.weight": "vision.pos_embed",
        v + "pre_layrnorm.weight": "vision.pre_norm.weight",
        v + "pre_layrnorm.bias": "vision.pre_norm.bias",
        v + "post_layernorm.weight": "vision.final_norm.weight",
        v + "post_layernorm.bias": "vision.final_norm.bias",
        "visual_projection.weight": "vision.proj.weight",
        "text_projection.weight": "text.proj.weight",
        "logit_scale": "logit_scale",
    }
    out = _rename(state, t + "encoder.layers.", "clip", "text.", extra)
    out.update(_rename(state, v + "encoder.layers.", "clip", "vision.", {}))
    return hf, cfg, out


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "Café, naïve, déjà vu: résumé. 日本語のテキスト。 Ünïcödé ✓ emoji 🙂",
    "one two three four five six seven eight nine ten",
]


def tiny_tokenizer_files(*, vocab_size: int = 300, chat: bool = True) -> dict[str, bytes]:
    """``tokenizer.json`` (byte-level BPE) and ``tokenizer_config.json`` as a weight file stores them.

    Special tokens: ``<|endoftext|>`` (0), ``<|im_start|>`` (1), ``<|im_end|>`` (2).
    """
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    config = {"eos_token": "<|im_end|>", "bos_token": None, "pad_token": "<|endoftext|>"}
    if chat:
        config["chat_template"] = CHAT_TEMPLATE
    return {
        "tokenizer.json": tok.to_str().encode(),
        "tokenizer_config.json": json.dumps(config).encode(),
    }
