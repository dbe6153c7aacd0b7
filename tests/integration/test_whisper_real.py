"""The real Whisper base (and tiny.en) converted to float32 vs transformers on the same weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_compression.families.whisper import convert as whisper_convert
from llm_compression.loader import WeightLoader, load_model
from llm_compression.preprocess.audio import load_audio, log_mel_batch
from llm_compression.provider.modalities import embed_audio
from llm_compression.validation.hf_whisper import rename

pytestmark = pytest.mark.integration
transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parents[1] / "fixtures"
SPEECH = FIXTURES / "hello_world.wav"


def hf_reference(ours, path):
    """WhisperForConditionalGeneration with the file's tensors (the ones our model loaded; its
    own state_dict holds them in their compute form) and our generation settings."""
    cfg, enc = ours.config, ours.config.encoder
    hf_cfg = transformers.WhisperConfig(
        vocab_size=cfg.vocab_size, num_mel_bins=cfg.n_mels, d_model=enc.dim,
        encoder_layers=enc.n_layers, decoder_layers=cfg.decoder.n_layers,
        encoder_attention_heads=enc.n_heads, decoder_attention_heads=cfg.decoder.n_heads,
        encoder_ffn_dim=enc.mlp_dim, decoder_ffn_dim=cfg.decoder.mlp_dim,
        max_source_positions=enc.max_positions, max_target_positions=cfg.decoder.max_positions,
    )  # fmt: skip
    with torch.device("meta"):  # no random init: every tensor is assigned below
        hf = transformers.WhisperForConditionalGeneration(hf_cfg).eval()
    # canonical -> HF names by inverting the converter's own declarative map
    weights = WeightLoader(path).load_weights()
    state = {k: v.clone() for k, v in rename(weights, whisper_convert.HF_MAP).items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    assert torch.equal(hf.proj_out.weight, hf.model.decoder.embed_tokens.weight)
    tok = ours.tokenizer
    sot, eot = tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|endoftext|>")
    no_ts = tok.token_to_id("<|notimestamps|>")
    gen = dict(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=no_ts, max_length=cfg.decoder.max_positions,
        suppress_tokens=list(cfg.suppress_tokens),
        begin_suppress_tokens=list(cfg.begin_suppress_tokens), is_multilingual=cfg.multilingual,
    )  # fmt: skip
    if cfg.multilingual:
        translate = tok.token_to_id("<|translate|>")
        gen["lang_to_id"] = {tok.id_to_token(i): i for i in range(sot + 1, translate)}
        gen["task_to_id"] = {
            "transcribe": tok.token_to_id("<|transcribe|>"),
            "translate": translate,
        }
    hf.generation_config = transformers.GenerationConfig(**gen)
    return hf


@pytest.fixture(scope="module")
def base(real_whisper_base_parquet):
    ours = load_model(real_whisper_base_parquet)
    return ours, hf_reference(ours, real_whisper_base_parquet)


def _hf_text(hf, tokenizer, audio, **kwargs) -> str:
    with torch.no_grad():
        out = hf.generate(log_mel_batch([audio]), **kwargs)
    return tokenizer.decode(out[0].tolist()).strip()


def test_transcription_equals_hf(base):
    ours, hf = base
    audio = load_audio(SPEECH)
    ref = _hf_text(hf, ours.tokenizer, audio, language="en", task="transcribe")
    assert "lazy dog" in ref  # the reference itself heard the sentence
    assert ours.transcribe(SPEECH, language="en") == ref
    # detected language; HF leaves the task token out unless task= is given, we always put it in
    assert ours.transcribe(SPEECH) == _hf_text(hf, ours.tokenizer, audio, task="transcribe")


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
def test_compute_modes_transcribe_like_hf(base, real_whisper_base_parquet, mode):
    """Issue #12: bfloat16 and int8 (int8 decoder, bfloat16 encoder, the encoder's keys and
    values in bfloat16) keep HF's float32 text on both test clips."""
    ours, hf = base
    model = load_model(real_whisper_base_parquet, dtype=mode)
    for path in (SPEECH, FIXTURES / "hello_world_stereo_44k.flac"):
        ref = _hf_text(hf, ours.tokenizer, load_audio(path), language="en", task="transcribe")
        assert model.transcribe(path, language="en") == ref


def test_resampled_stereo_file_transcribes_like_hf(base):
    ours, hf = base
    path = FIXTURES / "hello_world_stereo_44k.flac"
    ref = _hf_text(hf, ours.tokenizer, load_audio(path), language="en")
    assert ours.transcribe(path, language="en") == ref
    assert "hello" in ref.lower()


def test_encoder_embeddings_match_hf(base):
    ours, hf = base
    clips = [load_audio(SPEECH), load_audio(FIXTURES / "hello_world_stereo_44k.flac")]
    with torch.no_grad():
        states = hf.model.encoder(log_mel_batch(clips)).last_hidden_state
    got = embed_audio(ours, clips, sample_rate=16000, normalize=False).vectors
    for i, clip in enumerate(clips):
        frames = int(np.ceil(len(clip) / 320))
        ref = states[i, :frames].mean(0).numpy()
        cosine = float(got[i] @ ref / np.linalg.norm(got[i]) / np.linalg.norm(ref))
        assert cosine >= 0.99999, cosine


def test_timestamps_give_segments(base):
    ours, _ = base
    text = ours.transcribe(SPEECH, language="en", timestamps=True)
    first = text.splitlines()[0]
    assert re.match(r"^\[\d+\.\d\d -> \d+\.\d\d\] \S", first), text
    assert "dog" in text


def test_tiny_en_transcription_equals_hf(real_whisper_tiny_en_parquet):
    ours = load_model(real_whisper_tiny_en_parquet)
    assert not ours.config.multilingual
    hf = hf_reference(ours, real_whisper_tiny_en_parquet)
    ref = _hf_text(hf, ours.tokenizer, load_audio(SPEECH))
    assert "lazy dog" in ref
    assert ours.transcribe(SPEECH) == ref


# --- long-form: a 2 minute espeak-ng recording ----------------------------------------------

SENTENCES = (
    "The library stores model weights as compressed tables, one row for every tensor.",
    "Each file holds its configuration next to the weights, so nothing is guessed at load time.",
    "Speech recognition runs on the same transformer core as the text and image models.",
    "A long recording is cut into windows of thirty seconds each.",
    "The decoder predicts timestamps that mark where every phrase begins and ends.",
    "When a window ends in the middle of a phrase, the next window starts at the last complete one.",
    "That way no sentence is split between two windows.",
    "The weather today is mild, with a light wind from the west and a few clouds.",
    "In the afternoon the rain may return, so keep an umbrella close at hand.",
    "Our team met on Monday to plan the next release of the software.",
    "We agreed to measure every change against the reference implementation.",
    "Numbers that are not measured in the same run cannot be compared fairly.",
    "The kitchen smelled of fresh bread and strong coffee.",
    "Children played football in the park until the sun went down.",
    "A small boat crossed the lake slowly while the birds were singing.",
    "The museum opens at nine in the morning and closes at six in the evening.",
    "Tickets can be bought at the entrance or reserved online.",
    "Please remember to turn off the lights when you leave the room.",
    "The train to the city leaves every twenty minutes from platform four.",
    "She read the letter twice before she understood what it meant.",
    "The old bridge was repaired last summer and painted bright green.",
    "Music filled the hall as the orchestra began the second movement.",
    "He wrote down the address and put the note in his pocket.",
    "The garden needs water every evening during the hot weeks of July.",
    "Scientists observed the comet through a large telescope on the mountain.",
    "A quick brown fox jumps over the lazy dog.",
    "The meeting ended early, and everyone went home to rest.",
    "Thank you for listening to this long recording until the very end.",
)


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> Path:
    """122 s of espeak-ng speech (one call per sentence, 0.3 s pauses), cached by its text."""
    import hashlib
    import shutil
    import subprocess

    import soundfile

    from llm_compression.weights import cache_dir

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    key = hashlib.sha256("|".join(SENTENCES).encode()).hexdigest()[:12]
    folder = cache_dir() / "test-audio"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = tmp_path_factory.mktemp("test-audio")
    path = folder / f"espeak-long-{key}.wav"
    if not path.is_file():
        parts = []
        for i, sentence in enumerate(SENTENCES):
            part = folder / f"part-{key}-{i}.wav"
            cmd = ["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(part), sentence]
            subprocess.run(cmd, check=True, capture_output=True)
            parts += [load_audio(part), np.zeros(4800, np.float32)]
            part.unlink()
        soundfile.write(path.with_suffix(".tmp.wav"), np.concatenate(parts), 16000)
        path.with_suffix(".tmp.wav").rename(path)
    return path


def test_long_form_equals_hf_sequential_long_form(base, long_speech):
    """Whisper base on 122 s: the segments (tokens, start, end) equal HF's long-form generate."""
    ours, hf = base
    wave = load_audio(long_speech)
    assert 120 < len(wave) / 16000 < 180
    extractor = transformers.WhisperFeatureExtractor(feature_size=ours.config.n_mels)
    features = extractor(wave, sampling_rate=16000, truncation=False, padding="longest",
                         return_tensors="pt")["input_features"]  # fmt: skip
    hf.generation_config.max_initial_timestamp_index = 50  # as the released checkpoints set it
    with torch.no_grad():
        out = hf.generate(features, language="en", return_timestamps=True, return_segments=True)
    ref = [(float(s["start"]), float(s["end"]), s["tokens"].tolist()) for s in out["segments"][0]]
    found = ours.transcribe_segments(wave, language="en")
    assert [list(s.tokens) for s in found.segments] == [tokens for *_, tokens in ref]
    times = [t for s in found.segments for t in (s.start, s.end)]
    assert times == pytest.approx([t for start, end, _ in ref for t in (start, end)])
    assert len(found.segments) >= 20 and found.segments[-1].end > 115
    text = ours.tokenizer.decode(out["sequences"][0].tolist()).strip()
    assert found.text == text
    # no phrase is cut: every sentence ends inside one segment
    assert sum(s.text.endswith((".", "?", "!")) for s in found.segments) >= 25
