"""The family registry: every family states its config, model, sources and layout in one place."""

import pytest
import torch

from llm_compression.errors import UnsupportedFamilyError
from llm_compression.families import (
    FAMILIES,
    PRESETS,
    REGISTRY,
    build_model,
    family,
    preset,
    quantizable_names,
    tensor_shapes,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_come_from_the_model_built_on_meta(name):
    cfg = preset(name)
    shapes = tensor_shapes(cfg)
    model = build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    tensors = [*model.named_parameters(), *model.named_buffers()]  # batch-norm statistics
    assert shapes == {n: tuple(t.shape) for n, t in tensors}


@pytest.mark.parametrize(
    ("name", "included", "excluded"),
    [
        ("all-minilm-l6-v2", ["embed.token.weight", "embed.position.weight",
                              "layers.0.attn.q.weight", "layers.5.mlp.down.weight"],
         ["embed.norm.weight", "layers.0.attn.q.bias", "layers.0.attn_norm.weight"]),
        ("clip-vit-b-32", ["text.token_embed.weight", "vision.proj.weight",
                           "vision.layers.0.mlp.up.weight"],
         ["vision.pos_embed", "text.pos_embed", "vision.class_embed", "vision.patch_embed.weight",
          "logit_scale"]),
        ("whisper-base", ["decoder.token_embed.weight", "encoder.layers.0.attn.k.weight"],
         ["encoder.conv1.weight", "encoder.pos_embed", "decoder.pos_embed"]),
        ("smollm2-135m", ["token_embed.weight", "layers.29.mlp.gate.weight"],
         ["layers.0.attn_norm.weight", "final_norm.weight"]),
    ],
)  # fmt: skip
def test_quantizable_names_follow_module_types(name, included, excluded):
    names = quantizable_names(preset(name))
    assert set(included) <= names
    assert not set(excluded) & names
    shapes = tensor_shapes(preset(name))
    assert names <= set(shapes) and all(len(shapes[n]) == 2 for n in names)


def test_every_family_names_its_config_model_and_purpose():
    assert set(FAMILIES) == set(REGISTRY)
    for name, fam in REGISTRY.items():
        assert fam.name == name
        assert fam.describes and fam.provider_argument
        assert fam.hf or fam.ct2 or fam.gguf or fam.state_dict  # converts from some format
        for cfg in fam.presets.values():
            assert isinstance(cfg, fam.config_class)
            assert cfg.family == name
            assert isinstance(build_model(cfg), torch.nn.Module)


def test_unknown_family_is_a_typed_error():
    with pytest.raises(UnsupportedFamilyError, match="supported families"):
        family("resnet")
