import dataclasses
import json

import pytest

from llm_compression.config import TransformerConfig
from llm_compression.errors import ConfigError
from llm_compression.families import PRESETS, config_from_dict, config_to_dict, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(data) == cfg


def test_configs_are_frozen():
    cfg = preset("all-minilm-l6-v2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vocab_size = 1  # type: ignore[misc]


def test_unknown_preset_lists_known_names():
    with pytest.raises(ConfigError, match="clip-vit-b-32"):
        preset("clip-vit-b-16")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(norm="batchnorm"), "norm='batchnorm'"),
        (dict(activation="relu"), "activation"),
        (dict(n_heads=5), "not divisible"),
        (dict(n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(positions="learned", max_positions=0), "max_positions"),
        (dict(dim=0), "positive integer"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_transformer_config_rejects_inconsistent_values(kwargs, match):
    base = dict(dim=64, n_layers=1, n_heads=4, mlp_dim=128, max_positions=8)
    with pytest.raises(ConfigError, match=match):
        TransformerConfig(**{**base, **kwargs})


def test_unknown_family_and_fields_are_errors():
    with pytest.raises(ConfigError, match="supported families"):
        config_from_dict({"family": "gpt2"})
    data = config_to_dict(preset("all-minilm-l6-v2"))
    data["new_field"] = 1
    with pytest.raises(ConfigError, match="new_field"):
        config_from_dict(data)


def test_whisper_window_geometry():
    cfg = preset("whisper-base")
    assert (cfg.n_samples, cfg.n_frames, cfg.encoder.max_positions) == (480000, 3000, 1500)
    assert cfg.multilingual and not preset("whisper-tiny.en").multilingual
