"""Long-form transcription, beam search, temperature fallback and the transcribe CLI, checked
against transformers' generate on the tiny random Whisper of test_whisper_model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from test_whisper_model import _audio, _tokenizer_json, pair  # noqa: F401 (pair: a fixture)

from llm_compression.families.whisper import search
from llm_compression.families.whisper.segments import split_window

transformers = pytest.importorskip("transformers")

TS = 50364  # <|0.00|> of the multilingual vocabulary


def test_split_window_cuts_at_the_last_complete_segment():
    a, b, c = 100, 200, 300  # text tokens
    # two complete segments, then speech running past the window: seek to the end of the second
    tokens = [TS, a, TS + 50, TS + 50, b, TS + 120, TS + 120, c]
    segments, advance = split_window(tokens, TS, 3000)
    assert segments == [(0, 50, [TS, a, TS + 50]), (50, 120, [TS + 50, b, TS + 120, TS + 120])]
    assert advance == 240  # 120 steps of 20 ms = 240 mel frames of 10 ms
    # a single timestamp at the end: everything was heard, the whole window is consumed
    segments, advance = split_window([TS, a, TS + 50, TS + 50, b, TS + 90], TS, 2000)
    assert segments[-1] == (50, 90, [TS + 50, b, TS + 90]) and advance == 2000
    # no pair of timestamps: one segment up to the last timestamp, or the audio's end
    assert split_window([TS, a, b], TS, 1001) == ([(0, 500.5, [TS, a, b])], 1001)
    assert split_window([TS + 5, a, TS + 40, b], TS, 3000)[0][0][1] == 40


def _hf_long(hf, mel: torch.Tensor, **kwargs):
    with torch.no_grad():
        out = hf.generate(mel[None], return_timestamps=True, return_segments=True, **kwargs)
    return [(float(s["start"]), float(s["end"]), s["tokens"].tolist()) for s in out["segments"][0]]


def test_long_form_segments_equal_hf_long_form_generate(pair):  # noqa: F811
    hf, ours = pair
    wave = np.concatenate([_audio(20 + i, 14.0) for i in range(5)])  # 70 s: at least 3 windows
    windows = []
    found = ours.transcribe_segments(
        wave, language="en", max_new_tokens=40, progress=lambda *done: windows.append(done)
    )
    ref = _hf_long(hf, ours._mel_whole(wave), language="en", max_new_tokens=40)
    assert [list(s.tokens) for s in found.segments] == [tokens for *_, tokens in ref]
    times = [t for s in found.segments for t in (s.start, s.end)]
    assert times == pytest.approx([t for start, end, _ in ref for t in (start, end)])
    assert len(windows) >= 3 and windows[-1] == (7000, 7000)
    text_ids = [t for _, _, tokens in ref for t in tokens if t < 50257]
    assert found.text == ours.tokenizer.decode(text_ids).strip()
    assert ours.transcribe(wave, language="en", max_new_tokens=40) == found.text
    assert found.language == "en" and found.duration == pytest.approx(70.0)


def test_whole_input_mel_equals_hf_feature_extractor(pair):  # noqa: F811
    _, ours = pair
    wave = _audio(30, 41.3)
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    ref = extractor(wave, sampling_rate=16000, truncation=False, padding="longest",
                    return_tensors="pt")["input_features"][0]  # fmt: skip
    got = ours._mel_whole(wave)
    assert got.shape == ref.shape == (80, 4130)
    assert torch.allclose(got, ref, atol=2e-4)


@pytest.mark.parametrize("timestamps", [False, True])
def test_beam_search_equals_hf_num_beams(pair, timestamps):  # noqa: F811
    hf, ours = pair
    audio = _audio(40, 6.0)
    with torch.no_grad():
        ref = hf.generate(ours._mel([audio]), language="en", num_beams=3, max_new_tokens=12,
                          return_timestamps=timestamps)[0].tolist()  # fmt: skip
    body = [t for t in ref if t != 50257]
    greedy = ours.transcribe(audio, language="en", max_new_tokens=12, timestamps=timestamps)
    beam = ours.transcribe(audio, language="en", max_new_tokens=12, timestamps=timestamps,
                           beam_size=3)  # fmt: skip
    if not timestamps:
        assert beam == ours.tokenizer.decode(body).strip()
        assert beam != greedy  # the test model's beams find another text than greedy
    else:
        found = ours.transcribe_segments(audio, language="en", max_new_tokens=12, beam_size=3)
        assert [t for s in found.segments for t in s.tokens] == body


def test_compression_ratio_and_fallback_rules():
    assert search.compression_ratio("the cat sat on the mat " * 20) > 2.4
    assert search.compression_ratio("A quick brown fox jumps over the lazy dog.") < 2.4
    options = search.DecodeOptions.make(beam_size=1, temperature_fallback=True, max_new_tokens=None)
    looped = search.WindowResult([1], -0.2, 0.01, 0.0, 3.1)
    unlikely = search.WindowResult([1], -1.5, 0.01, 0.0, 1.2)
    fine = search.WindowResult([1], -0.3, 0.01, 0.0, 1.2)
    silent = search.WindowResult([1], -1.5, 0.9, 0.0, 1.2)
    assert search._needs_fallback(looped, options) and search._needs_fallback(unlikely, options)
    assert not search._needs_fallback(fine, options)
    assert not search._needs_fallback(silent, options)  # silence is skipped, not re-decoded
    assert search._mark_silence(silent, options).is_silence
    assert not search._mark_silence(fine, options).is_silence
    default = search.DecodeOptions()
    assert not search._needs_fallback(looped, default)  # the default never falls back


def test_temperature_fallback_triggers_on_unlikely_text(pair):  # noqa: F811
    _, ours = pair
    audio = _audio(50, 8.0)
    greedy = ours.transcribe_segments(audio, language="en", max_new_tokens=40)
    assert greedy.segments[0].temperature == 0.0
    assert greedy.segments[0].avg_logprob < -1.0  # a random model is unsure of every token
    fallback = ours.transcribe_segments(
        audio, language="en", max_new_tokens=40, temperature_fallback=True
    )
    assert fallback.segments[0].temperature > 0.0  # decoded again by sampling
    again = ours.transcribe_segments(
        audio, language="en", max_new_tokens=40, temperature_fallback=True
    )
    assert again == fallback  # seeded: the same transcript every time
    # the default stays greedy: identical to a call that does not mention the options
    plain = ours.transcribe(audio, language="en", max_new_tokens=40)
    assert ours.transcribe(audio, language="en", max_new_tokens=40, beam_size=1) == plain


def test_bad_decoding_options_raise_typed_errors(pair):  # noqa: F811
    from llm_compression.errors import InputError

    _, ours = pair
    with pytest.raises(InputError, match="beam_size"):
        ours.transcribe(_audio(1, 1.0), beam_size=0)
    with pytest.raises(InputError, match="temperatures"):
        search.DecodeOptions(temperatures=(-1.0,))


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_file(pair, tmp_path_factory):  # noqa: F811
    from llm_compression.weightfile import write_model

    _, ours = pair
    weights = {k: v.numpy() for k, v in ours.state_dict().items()}
    path = tmp_path_factory.mktemp("whisper") / "tiny-whisper.parquet"
    return write_model(path, weights, config=ours.config, dtype="float32",
                       files={"tokenizer.json": _tokenizer_json()})  # fmt: skip


def _wav(path, seed: int, seconds: float):
    import soundfile

    soundfile.write(path, _audio(seed, seconds), 16000)
    return path


def test_cli_several_files_and_a_bad_one(pair, weight_file, tmp_path, capsys):  # noqa: F811
    from llm_compression.cli import main

    _, ours = pair
    a, b = _wav(tmp_path / "a.wav", 60, 2.0), _wav(tmp_path / "b.wav", 61, 3.0)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    args = ["transcribe", str(weight_file), str(a), str(bad), str(b), "--language", "en",
            "--max-new-tokens", "4"]  # fmt: skip
    assert main(args) == 2  # one file failed ...
    captured = capsys.readouterr()
    for path in (a, b):  # ... the others were transcribed
        expected = ours.transcribe(path, language="en", max_new_tokens=4)
        assert f"==> {path} <==\n{expected}\n" in captured.out
    assert f"error: {bad}: cannot decode" in captured.err
    assert "Traceback" not in captured.err


def test_cli_output_formats_and_stdin(pair, weight_file, tmp_path, capsys, monkeypatch):  # noqa: F811
    from llm_compression.cli import main

    _, ours = pair
    a = _wav(tmp_path / "a.wav", 62, 2.0)
    out = tmp_path / "out"
    base = ["transcribe", str(weight_file), "--language", "en", "--max-new-tokens", "6"]
    for fmt in ("srt", "vtt", "json"):
        assert main([*base, str(a), "--output-format", fmt, "--output-dir", str(out)]) == 0
    found = ours.transcribe_segments(a, language="en", max_new_tokens=6)
    data = json.loads((out / "a.json").read_text())
    assert data["text"] == found.text and data["language"] == "en"
    assert [s["start"] for s in data["segments"]] == [s.start for s in found.segments]
    srt, vtt = (out / "a.srt").read_text(), (out / "a.vtt").read_text()
    first = found.segments[0]
    start = f"00:00:{int(first.start):02d}{{}}{round(first.start % 1 * 1000):03d} --> "
    assert srt.startswith(f"1\n{start.format(',')}") and first.text in srt
    assert vtt.startswith(f"WEBVTT\n\n{start.format('.')}") and first.text in vtt
    assert "a.srt" in capsys.readouterr().err  # "wrote PATH" and the progress bar on stderr
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(a.read_bytes())))
    assert main([*base, "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ours.transcribe(a, language="en", max_new_tokens=6)
    assert "/2 s" in captured.err  # the progress bar over the audio's seconds
    assert main([*base, "-", "-"]) == 2
    assert "stdin" in capsys.readouterr().err


def test_cli_dtype_transcribes_with_that_compute_mode(weight_file, tmp_path, capsys):
    from llm_compression.cli import main
    from llm_compression.loader import load_model

    a = _wav(tmp_path / "a.wav", 63, 2.0)
    args = ["transcribe", str(weight_file), str(a), "--language", "en", "--max-new-tokens", "5"]
    assert main([*args, "--dtype", "int8", "--no-progress"]) == 0
    int8 = load_model(weight_file, dtype="int8")
    assert capsys.readouterr().out.strip() == int8.transcribe(a, language="en", max_new_tokens=5)
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main([*args, "--dtype", "int3"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
