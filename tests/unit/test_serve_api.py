"""The HTTP API through the official ``openai`` client and raw HTTP: shapes, extension, errors."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
openai = pytest.importorskip("openai", reason="needs the dev extra (openai)")
httpx = pytest.importorskip("httpx", reason="needs the dev extra (httpx)")

from provider_helpers import photo, tone  # noqa: E402
from serve_helpers import build_store, data_url, png_bytes, running, wav_bytes  # noqa: E402

from llm_compression.serve import ServeConfig, create_app  # noqa: E402

KEY = "test-key"


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    store = build_store(tmp_path_factory.mktemp("serve_store"), files)
    cfg = ServeConfig(text_model=files["bert"], clip_model=files["clip"],
                      audio_model=files["whisper"], store=store, api_key=KEY,
                      max_body_bytes=2_000_000, max_inputs=8, max_input_tokens=64)  # fmt: skip
    with running(create_app(cfg)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)


def post(server, path, body=None, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server + path, json=body, headers=headers, timeout=30, **kw)


def test_openai_client_embeds_text_as_the_provider_does(client, provider):
    # the client asks for base64 by default and decodes it
    got = client.embeddings.create(model="tiny_bert", input=["a cat", "a rocket launch"])
    assert got.model == "tiny_bert" and len(got.data) == 2 and got.usage.prompt_tokens > 0
    vecs = np.array([d.embedding for d in got.data], dtype=np.float32)
    np.testing.assert_allclose(vecs, provider.encode(["a cat", "a rocket launch"]), atol=1e-5)
    one = client.embeddings.create(model="x", input="a cat", encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, vecs[0], atol=1e-5)


def test_base64_is_little_endian_float32(server, provider):
    r = post(server, "/v1/embeddings", {"input": "a cat", "encoding_format": "base64"})
    body = r.json()
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert body["dimensions"] == vec.size == provider.dimension
    np.testing.assert_allclose(vec, provider.encode("a cat"), atol=1e-5)


def test_image_and_audio_data_urls(server, provider, client):
    png = png_bytes(photo("chelsea"))
    r = post(server, "/v1/embeddings", {"input": [{"image": data_url(png, "image/png")}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny_clip" and body["modality"] == "image"
    np.testing.assert_allclose(body["data"][0]["embedding"],
                               provider.encode_image([photo("chelsea")])[0], atol=1e-4)  # fmt: skip
    wave = tone(1.0, 440.0)
    r = post(
        server, "/v1/embeddings", {"input": [{"audio": data_url(wav_bytes(wave), "audio/wav")}]}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["data"][0]["embedding"],
                               provider.encode_audio([wave], sample_rate=16000)[0], atol=1e-4)  # fmt: skip
    # naming the CLIP model sends text through CLIP's text tower
    clip_text = client.embeddings.create(model="tiny_clip", input="a cat")
    np.testing.assert_allclose(clip_text.data[0].embedding,
                               provider.clip_engine.encode_text("a cat")[0], atol=1e-5)  # fmt: skip


def test_models_health_metrics(server, client):
    ids = {m.id for m in client.models.list()}
    assert ids == {"tiny_bert", "tiny_clip", "tiny_whisper"}
    health = httpx.get(server + "/health").json()  # open without a key
    assert health["status"] == "ok" and set(health["store"]["tables"]) == {"text", "image"}
    assert httpx.get(server + "/metrics").status_code == 401
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "llmc_requests_total{" in text and "llmc_batch_size_bucket{" in text
    assert 'route="/v1/embeddings"' in text and "llmc_request_seconds_bucket" in text


@pytest.mark.parametrize(
    ("body", "key", "status"),
    [
        ({"input": "a"}, None, 401),
        ({"input": "a"}, "wrong", 401),
        ({"input": []}, KEY, 400),
        ({"input": ["a"] * 9}, KEY, 400),  # max_inputs=8
        ({"input": "word " * 200}, KEY, 400),  # max_input_tokens=64
        ({"input": [{"image": "/etc/passwd"}]}, KEY, 400),  # a path is never read
        ({"input": [{"image": "data:image/png;base64,AAAA"}]}, KEY, 400),  # not an image
        ({"input": ["a", {"image": "data:image/png;base64,AAAA"}]}, KEY, 400),  # mixed kinds
        ({"input": [[1, 2, 3]]}, KEY, 400),  # token ids
        ({"input": "a", "encoding_format": "int8"}, KEY, 400),
        ({"nothing": 1}, KEY, 400),
    ],
)
def test_errors_have_openai_shape(server, body, key, status):
    r = post(server, "/v1/embeddings", body, key=key)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_openai_client_raises_its_typed_errors(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="x", input="a")
    good = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="token-id inputs"):
        good.embeddings.create(model="x", input=[[1, 2]])


def test_body_over_the_limit_is_413(server):
    big = {"input": [{"image": "data:image/png;base64," + "A" * 2_100_000}]}
    assert post(server, "/v1/embeddings", big).status_code == 413
    # a chunked body (no Content-Length) is cut off as it arrives
    chunks = (b"x" * 65536 for _ in range(40))
    r = httpx.post(server + "/v1/embeddings", content=chunks,
                   headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method(server):
    r = httpx.get(server + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and "error" in r.json()


def test_openai_client_passes_image_objects_through(client, provider):
    url = data_url(png_bytes(photo("rocket")), "image/png")
    got = client.embeddings.create(model="tiny_clip", input=[{"image": url}])  # type: ignore[list-item]
    np.testing.assert_allclose(got.data[0].embedding,
                               provider.encode_image([photo("rocket")])[0], atol=1e-4)  # fmt: skip


def test_cli_refuses_a_missing_model_file(capsys):
    from llm_compression.cli import main

    assert main(["serve", "--text-model", "/nonexistent/minilm.parquet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_provider_encode_is_sentence_transformers_compatible(provider):
    one = provider.encode("a cat", batch_size=4, show_progress_bar=False)
    many = provider.encode(["a cat", "a dog"], batch_size=1, normalize_embeddings=True)
    tensor = provider.encode(["a cat"], convert_to_tensor=True)
    assert one.shape == (provider.dimension,) and many.shape == (2, provider.dimension)
    assert tuple(tensor.shape) == (1, provider.dimension)
    np.testing.assert_allclose(many[0], one, atol=1e-5)
