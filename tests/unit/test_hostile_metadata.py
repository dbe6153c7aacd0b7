"""Edited metadata is checksummed like tensors; the config is checked against the shapes (10.2)."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pyarrow as pa
import pytest
import torch
from hostile_helpers import LLAMA, metadata, model_file, random_state, rewrite

from llm_compression.errors import (
    ConfigError,
    CorruptFileError,
    FormatError,
    LLMCompressionError,
    MissingTensorError,
)
from llm_compression.families import build_model
from llm_compression.loader import WeightLoader, load_model, load_weights_into
from llm_compression.provider.modalities import embed_texts
from llm_compression.weightfile import read_metadata
from llm_compression.weightfile.format import FILE_PREFIX, METADATA_CHECKSUM_KEY

CONFIG = "llm_compression.config"


def _edit_config(change):
    def edit(kv):
        config = json.loads(kv[CONFIG])
        change(config)
        kv[CONFIG] = json.dumps(config, sort_keys=True)

    return edit


def _set(section, key, value):
    def change(config):
        (config[section] if section else config)[key] = value

    return change


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    return model_file(tmp_path_factory.mktemp("bert") / "b.parquet")


@pytest.fixture
def bert(bert_file, tmp_path):
    path = tmp_path / "b.parquet"
    path.write_bytes(bert_file.read_bytes())
    return path


def test_new_files_carry_a_metadata_checksum_that_verifies(bert):
    assert METADATA_CHECKSUM_KEY in metadata(bert)
    assert read_metadata(bert).metadata_checked
    assert embed_texts(load_model(bert), ["a cat"]).shape == (1, 32)


def test_one_flipped_bit_in_norm_eps_is_caught(bert):
    # The reproduction: 1e-12 -> 1e-02, one bit of one character ('1' ^ 0x01 is '0').
    def flip(kv):
        assert '"norm_eps": 1e-12' in kv[CONFIG]
        kv[CONFIG] = kv[CONFIG].replace('"norm_eps": 1e-12', '"norm_eps": 1e-02')

    rewrite(bert, flip)
    for open_file in (
        lambda: read_metadata(bert),
        lambda: WeightLoader(bert),
        lambda: load_model(bert),
    ):
        with pytest.raises(CorruptFileError, match="metadata .* fails its checksum.*convert"):
            open_file()


@pytest.mark.parametrize(
    "change",
    [_set(None, "pooling", "cls"), _set("encoder", "n_heads", 8), _set(None, "normalize", False)],
    ids=["pooling", "n_heads", "normalize"],
)
def test_edits_that_shapes_cannot_see_are_caught_by_the_checksum(bert, change):
    rewrite(bert, _edit_config(change))
    with pytest.raises(CorruptFileError, match="fails its checksum"):
        load_model(bert)


def test_an_edited_tokenizer_file_is_caught_even_with_its_crc32_fixed(bert):
    def edit(kv):
        raw = read_metadata(bert).files["tokenizer.json"].replace(b'"<|im_end|>"', b'"<|im_xxx|>"')
        kv[FILE_PREFIX + "tokenizer.json"] = base64.b64encode(
            pa.compress(raw, codec="zstd", asbytes=True)
        ).decode()
        manifest = json.loads(kv["llm_compression.files"])
        manifest["tokenizer.json"].update(size=len(raw), crc32=zlib.crc32(raw))
        kv["llm_compression.files"] = json.dumps(manifest, sort_keys=True)

    rewrite(bert, edit)
    with pytest.raises(CorruptFileError, match="fails its checksum"):
        load_model(bert)


def test_family_key_contradicting_the_config(bert):
    rewrite(bert, lambda kv: kv.update({"llm_compression.family": "clip"}), rehash=True)
    for open_file in (lambda: read_metadata(bert), lambda: load_model(bert)):
        with pytest.raises(CorruptFileError, match="'llm_compression.family' says 'clip'.*bert"):
            open_file()


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            _set("encoder", "n_heads", 5),
            FormatError,
            "n_heads=5 must be a multiple of n_kv_heads=4",
        ),
        (_set("encoder", "mlp_dim", 48), CorruptFileError, r"\(64, 32\) \(expected \(48, 32\)\)"),
        (_set(None, "vocab_size", 301), CorruptFileError, "does not fit the stored tensors"),
        (_set("encoder", "n_layers", 2), MissingTensorError, "missing.*layers.1"),
        (_set("encoder", "n_layers", 10**12), CorruptFileError, "1000000000000 layers but"),
        (_set("encoder", "dim", 2**62), ConfigError, "cannot build a SentenceEncoder"),
        (_set("encoder", "norm_placement", "nowhere"), FormatError, "norm_placement='nowhere'"),
        (_set("encoder", "norm_eps", "tiny"), FormatError, "cannot be rebuilt"),
    ],
)
def test_consistent_but_wrong_config_is_refused_before_decoding(bert, change, error, match):
    # rehash=True: someone edited the config and fixed the checksum; shapes still catch it.
    rewrite(bert, _edit_config(change), rehash=True)
    with pytest.raises(error, match=match):
        load_model(bert)


@pytest.mark.parametrize(
    "config, match",
    [
        ("[]", "holds a JSON list, expected an object"),
        ('"bert"', "holds a JSON str, expected an object"),
        ("null", "holds a JSON NoneType"),
        (None, "TransformerConfig must be a JSON object, got NoneType"),
    ],
)
def test_config_of_the_wrong_json_type_is_a_typed_error(bert, config, match):
    def edit(kv):
        if config is None:
            _edit_config(_set(None, "encoder", None))(kv)
        else:
            kv[CONFIG] = config

    rewrite(bert, edit, rehash=True)
    opens = [lambda: WeightLoader(bert), lambda: load_model(bert)]
    if config is not None:  # the weight-file layer checks the JSON type; fields are the loader's
        opens.append(lambda: read_metadata(bert))
    for open_file in opens:
        with pytest.raises(FormatError, match=match):
            open_file()


def test_old_files_without_the_checksum_still_load_unchecked(bert):
    rewrite(bert, lambda kv: kv.pop(METADATA_CHECKSUM_KEY))
    meta = read_metadata(bert)
    assert not meta.metadata_checked
    assert embed_texts(load_model(bert), ["a cat"]).shape == (1, 32)
    # Shape and consistency checks still apply to them.
    rewrite(bert, _edit_config(_set("encoder", "mlp_dim", 48)))
    with pytest.raises(CorruptFileError, match="does not fit the stored tensors"):
        load_model(bert)


def test_wrong_shape_tensor_given_to_load_weights_into_is_typed():
    state = {k: torch.from_numpy(v) for k, v in random_state(LLAMA).items()}
    state["token_embed.weight"] = torch.zeros(299, 32)
    with pytest.raises(ConfigError, match="size mismatch.*token_embed.weight") as info:
        load_weights_into(build_model(LLAMA), state)
    assert isinstance(info.value, LLMCompressionError)


def test_corrupt_metadata_checksum_value_is_typed(bert):
    rewrite(bert, lambda kv: kv.update({METADATA_CHECKSUM_KEY: "sha999:00"}))
    with pytest.raises(FormatError, match="'sha999'.*upgrade"):
        read_metadata(bert)
    rewrite(bert, lambda kv: kv.update({METADATA_CHECKSUM_KEY: "no colon at all"}))
    with pytest.raises(FormatError):
        read_metadata(bert)


def test_checksum_covers_every_key_but_not_other_writers_keys(bert):
    kv = metadata(bert)
    assert {"llm_compression.config", "llm_compression.tensors", "llm_compression.family"} <= set(
        kv
    )
    assert np.all([k.startswith("llm_compression.") for k in kv])
