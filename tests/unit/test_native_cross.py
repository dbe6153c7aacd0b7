"""Whisper's text decoder in our C kernel (``core.native_cross``, decision 0018): float32 over
views of the plain weights gives HF's tokens and torch's logits; int8 computes from the kernel's
copies of the int8 rows, the torch layers it copied released."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_whisper_model import _audio, _hf_tokens, _spy_windows, pair  # noqa: F401
from torch import nn

from llm_compression.core.compute import apply_compute
from llm_compression.core.compute_layers import Float32Linear, Int8Linear
from llm_compression.errors import InputError
from llm_compression.families import build_model
from llm_compression.loader import load_weights_into
from llm_compression.preprocess.audio import log_mel_batch

_decode = pytest.importorskip("llm_compression.core._decode")
from llm_compression.core.native_cross import CrossDecoder  # noqa: E402

pytestmark = pytest.mark.skipif(_decode.kernel() != "avx512", reason="this CPU lacks AVX512-VNNI")


def _converted(ours, mode: str):
    """A copy of the pair's model, converted for ``mode``."""
    state = {name: t.clone() for name, t in ours.state_dict().items()}
    model = load_weights_into(build_model(ours.config), state)
    model.tokenizer = ours.tokenizer
    return apply_compute(model, mode)


def _torch_logits(decoder, ids, memory, cache=None, start_pos=0):
    steps, decoder.native_steps = decoder.native_steps, None
    try:
        return decoder(ids, memory=memory, cache=cache, start_pos=start_pos)
    finally:
        decoder.native_steps = steps


@pytest.fixture(scope="module")
def float32(pair):  # noqa: F811
    return _converted(pair[1], "float32")


def test_float32_decoder_runs_in_the_kernel_over_plain_rows(float32) -> None:
    dec = float32.decoder
    assert isinstance(dec.native_steps, CrossDecoder) and dec.native_steps.float32
    assert type(dec.layers[0].mlp.up) is nn.Linear and type(dec.layers[0].attn.qkv) is nn.Linear
    assert isinstance(float32.encoder.layers[0].mlp.up, Float32Linear)  # the encoder is packed


@pytest.mark.parametrize("language", ["en", "de", None])
def test_float32_greedy_tokens_match_hf_generate(pair, float32, language, monkeypatch) -> None:  # noqa: F811
    hf, _ = pair
    audio = _audio(6, 4.0)
    ref = _hf_tokens(hf, audio, language=language, task="transcribe", max_new_tokens=8)
    captured = _spy_windows(monkeypatch)
    float32.transcribe(audio, language=language, max_new_tokens=8)
    assert captured[0][0] == [t for t in ref if t != 50257]


def test_kernel_logits_follow_torch_step_by_step(float32) -> None:
    dec = float32.decoder
    memory = float32.encode(log_mel_batch([_audio(7, 2.0), _audio(8, 3.0)]))
    ids = torch.tensor([[50258, 50259, 50359], [50258, 50261, 50359]])
    with torch.inference_mode():
        mine, theirs = dec.new_cache(2, 8), dec.new_cache(2, 8)
        got = dec(ids, memory=memory, cache=mine)
        want = _torch_logits(dec, ids, memory, theirs)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        step = torch.tensor([[400], [401]])
        got = dec(step, memory=memory, cache=mine, start_pos=3)
        want = _torch_logits(dec, step, memory, theirs, start_pos=3)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        alone = dec(ids, memory=memory)  # no cache: attention over these tokens alone
        assert (alone - _torch_logits(dec, ids, memory)).abs().max() <= 1e-4 * want.abs().max()


def test_beam_search_gives_the_torch_decoders_text(float32) -> None:
    audio = _audio(9, 3.0)
    got = float32.transcribe(audio, language="en", beam_size=3, max_new_tokens=8)
    steps, float32.decoder.native_steps = float32.decoder.native_steps, None
    try:
        want = float32.transcribe(audio, language="en", beam_size=3, max_new_tokens=8)
    finally:
        float32.decoder.native_steps = steps
    assert got == want


def test_a_replaced_weight_sends_the_pass_to_torch(pair) -> None:  # noqa: F811
    model = _converted(pair[1], "float32")
    dec = model.decoder
    memory = model.encode(log_mel_batch([_audio(7, 2.0)]))
    ids = torch.tensor([[50258, 50259, 50359]])
    old = dec.layers[0].mlp.down.weight
    dec.layers[0].mlp.down.weight = nn.Parameter(old.detach() * 2, requires_grad=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel still reads the replaced weight")

    dec.native_steps.run = refuse
    with torch.inference_mode():
        got = dec(ids, memory=memory)
    assert torch.equal(got, _torch_logits(dec, ids, memory))


def test_int8_decoder_computes_from_its_copies(pair) -> None:  # noqa: F811
    _, ours = pair
    model, exact = _converted(ours, "int8"), _converted(ours, "float32")
    dec = model.decoder
    assert isinstance(dec.native_steps, CrossDecoder) and not dec.native_steps.float32
    block = dec.layers[0]
    assert block.attn.o is None and block.mlp.up is None and dec.head is None  # released
    assert isinstance(block.cross_attn.k, Int8Linear)  # projects the encoder's output, by torch
    assert dec.native_steps.nbytes > 0
    memory = exact.encode(log_mel_batch([_audio(7, 2.0)]))
    ids = torch.tensor([[50258, 50259, 50359, 400, 401]])
    with torch.inference_mode():
        got, want = dec(ids, memory=memory), exact.decoder(ids, memory=memory)
    assert (got - want).norm() <= 0.05 * want.norm()
    text = model.transcribe(_audio(6, 4.0), language="en", max_new_tokens=8)
    assert isinstance(text, str)


def test_bad_calls_are_typed_errors(float32) -> None:
    dec = float32.decoder
    memory = float32.encode(log_mel_batch([_audio(7, 1.0)]))
    ids = torch.tensor([[50258, 50259, 50359]])
    with pytest.raises(InputError, match="KV cache holds 2"):
        dec(ids, memory=memory, cache=dec.new_cache(1, 2))
    with pytest.raises(InputError, match="encoder output"):
        dec(ids, memory=None, cache=dec.new_cache(1, 4))
    cache = dec.new_cache(1, 4)
    cache[0].k = cache[0].k.transpose(2, 3)
    with pytest.raises(InputError, match="contiguous float32"):
        dec(ids, memory=memory, cache=cache)
    assert np.isfinite(dec(ids, memory=memory).numpy()).all()


def test_the_kernel_refuses_cross_buffers_that_do_not_fit(float32) -> None:
    """The C entry point itself: a cross-attention model takes the encoder's keys and values
    (12 arguments), each buffer of one row or of every row, every layer alike."""
    dec = float32.decoder
    model, cfg = dec.native_steps._model, dec.cfg
    B, T, capacity, memory = 2, 1, 4, 5
    x = np.zeros((B, T, cfg.dim), np.float32)
    past, wanted = np.zeros(B, np.int32), np.zeros((B, T), np.int64)
    caches = [np.zeros((B, cfg.n_heads, capacity, cfg.head_dim), np.float32)] * (2 * cfg.n_layers)
    logits = np.zeros((B, T, dec.native_steps.vocab), np.float32)
    args = (model, x, B, T, past, caches, capacity, wanted, T, logits)
    with pytest.raises(TypeError, match="12 with cross-attention"):
        _decode.step(*args)
    one = np.zeros((1, cfg.n_heads, memory, cfg.head_dim), np.float32)
    each = np.zeros((B, cfg.n_heads, memory, cfg.head_dim), np.float32)
    with pytest.raises(ValueError, match="every layer alike"):
        _decode.step(*args, [one] + [each] * (2 * cfg.n_layers - 1), memory)
    with pytest.raises(ValueError, match="cross buffer 0"):
        _decode.step(*args, [np.zeros(7, np.float32)] * (2 * cfg.n_layers), memory)
    with pytest.raises(ValueError, match="memory length"):
        _decode.step(*args, [one] * (2 * cfg.n_layers), 0)
    _decode.step(*args, [one] * (2 * cfg.n_layers), memory)  # one row shared by both
    assert np.isfinite(logits).all()
