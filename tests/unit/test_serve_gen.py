"""Chat completions (plain and streamed), transcriptions and search over HTTP."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
openai = pytest.importorskip("openai", reason="needs the dev extra (openai)")
httpx = pytest.importorskip("httpx", reason="needs the dev extra (httpx)")

from provider_helpers import photo, tone  # noqa: E402
from serve_helpers import (  # noqa: E402
    build_store,
    data_url,
    png_bytes,
    running,
    tiny_llm_file,
    wav_bytes,
)

from llm_compression.loader import load_model  # noqa: E402
from llm_compression.serve import ServeConfig, create_app  # noqa: E402
from llm_compression.serve.routes_gen import _transcript  # noqa: E402


@pytest.fixture(scope="module")
def llm_path(tmp_path_factory):
    return tiny_llm_file(tmp_path_factory.mktemp("serve_llm"))


@pytest.fixture(scope="module")
def server(files, llm_path, tmp_path_factory):
    store = build_store(tmp_path_factory.mktemp("serve_gen_store"), files)
    cfg = ServeConfig(store=store, audio_model=files["whisper"], llm=llm_path, max_new_tokens=16)
    with running(create_app(cfg)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_completion_matches_generate(client, llm_path):
    messages = [{"role": "user", "content": "Hello there"}]
    got = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=8,
                                         temperature=0)  # fmt: skip
    expected = load_model(llm_path).generate(messages, chat=True, max_new_tokens=8)
    assert got.choices[0].message.content == expected
    assert got.model == "tiny-llama" and got.usage.prompt_tokens > 0
    assert got.choices[0].finish_reason in ("stop", "length")


def test_streamed_chat_joins_to_the_plain_answer(client):
    messages = [{"role": "user", "content": "Tell me"}]
    plain = client.chat.completions.create(model="m", messages=messages, max_tokens=10,
                                           temperature=0).choices[0].message.content  # fmt: skip
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=10,
                                            temperature=0, stream=True)  # fmt: skip
    chunks = list(stream)
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain


def test_bad_chat_request_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[], max_tokens=4)


def test_transcriptions_in_every_format(client, server):
    wav = wav_bytes(tone(1.0, 300.0))
    text = client.audio.transcriptions.create(model="w", file=("a.wav", wav, "audio/wav"))
    assert isinstance(text.text, str)
    for fmt in ("text", "srt", "vtt"):
        r = httpx.post(server + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                       data={"response_format": fmt}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        if fmt == "vtt":
            assert r.text.startswith("WEBVTT")
    r = httpx.post(server + "/v1/audio/transcriptions", files={"file": ("a.wav", b"junk")},
                   timeout=60)  # fmt: skip
    assert r.status_code == 400 and "cannot decode the audio" in r.json()["error"]["message"]


def test_srt_vtt_and_verbose_json_from_segments():
    from llm_compression.families.whisper.segments import Segment, Transcript

    def segment(start, end, text):
        return Segment(start, end, text, (), 0.0, -0.2, 1.1, 0.01)

    transcript = Transcript("Hello there. General Kenobi.", (segment(0.0, 1.5, "Hello there."),
                            segment(1.5, 3.0, "General Kenobi."), segment(3.0, 3.2, "")), "en", 3.2)  # fmt: skip
    srt = _transcript(transcript, "srt").body.decode()
    assert srt == ("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
                   "2\n00:00:01,500 --> 00:00:03,000\nGeneral Kenobi.\n")  # fmt: skip
    vtt = _transcript(transcript, "vtt")
    assert vtt.media_type == "text/vtt"
    assert vtt.body.decode().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n")
    verbose = _transcript(transcript, "verbose_json")
    assert verbose["duration"] == 3.2 and verbose["segments"][1]["start"] == 1.5


def test_text_search_ranks_the_matching_document_first(server):
    r = httpx.post(server + "/v1/search", json={"query": "a cat sleeping on a sofa", "k": 3,
                                                "modality": "text"})  # fmt: skip
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert hits[0]["source"] == "cat.txt" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["snippet"] == "a cat sleeping on a sofa"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_image_search_and_media(server):
    png = png_bytes(photo("rocket"))
    r = httpx.post(server + "/v1/search", json={"query": {"image": data_url(png, "image/png")},
                                                "k": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert hits[0]["source"] == "rocket.png" and hits[0]["modality"] == "image"
    media = httpx.get(server + hits[0]["media"]["url"])
    assert media.status_code == 200 and media.headers["content-type"] == "image/png"


def test_search_errors(server):
    r = httpx.post(server + "/v1/search", json={"query": "x", "where": "nope nope"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server + "/v1/search", json={"query": {"audio": data_url(b"x", "audio/wav")}})
    assert r.status_code == 400
    r = httpx.get(server + "/v1/media", params={"modality": "image", "id": "/etc/passwd"})
    assert r.status_code == 404


def test_compute_options_reach_the_models(files, llm_path):
    """``--llm-dtype`` and ``--dtype`` / ``--backend`` are the models' load options: an int8 chat
    answers as ``load_model(dtype="int8")`` does, embeddings are the ORT int8 provider's; a mode
    the server does not know is a ConfigError before it starts."""
    import numpy as np

    from llm_compression.errors import ConfigError
    from llm_compression.provider import MultimodalEmbeddingProvider

    pytest.importorskip("onnxruntime")
    cfg = ServeConfig(llm=llm_path, text_model=files["bert"], max_new_tokens=8, llm_dtype="int8",
                      dtype="int8", backend="onnxruntime")  # fmt: skip
    messages = [{"role": "user", "content": "Hello there"}]
    with running(create_app(cfg)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        got = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=8,
                                             temperature=0)  # fmt: skip
        vecs = client.embeddings.create(model="tiny_bert", input=["a cat", "a rocket launch"])
    int8 = load_model(llm_path, dtype="int8")
    assert got.choices[0].message.content == int8.generate(messages, chat=True, max_new_tokens=8)
    ort = MultimodalEmbeddingProvider(text_model=files["bert"], dtype="int8", backend="onnxruntime")
    want = ort.encode(["a cat", "a rocket launch"])
    np.testing.assert_allclose([d.embedding for d in vecs.data], want, atol=1e-5)
    for bad in ({"llm_dtype": "bfloat16"}, {"backend": "tensorrt"}, {"dtype": "int4"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ServeConfig(llm=llm_path, **bad)
