"""The server with the real packaged models, through the official ``openai`` client.

MiniLM embeddings equal the provider's (16 concurrent clients, no errors), Whisper tiny.en
transcribes espeak-ng speech as srt, SmolLM2 streams a chat answer equal to its plain one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("fastapi", reason="needs the 'serve' extra")
openai = pytest.importorskip("openai", reason="needs the dev extra (openai)")

from llm_compression.provider import MultimodalEmbeddingProvider  # noqa: E402
from llm_compression.serve import ServeConfig, create_app  # noqa: E402


@contextmanager
def running(app):
    """``app`` under uvicorn on 127.0.0.1 (a free port) until the block ends; yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


TEXTS = [f"document {i} talks about topic {i % 5} at some length" for i in range(64)]


@pytest.fixture(scope="module")
def client(real_minilm_parquet, real_whisper_tiny_en_parquet, real_smollm2_parquet):
    cfg = ServeConfig(text_model=real_minilm_parquet, audio_model=real_whisper_tiny_en_parquet,
                      llm=real_smollm2_parquet, max_new_tokens=24)  # fmt: skip
    with running(create_app(cfg)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_minilm_embeddings_under_concurrency_equal_the_provider(client, real_minilm_parquet):
    def one(text):
        return client.embeddings.create(model="all-minilm-l6-v2", input=text).data[0].embedding

    with ThreadPoolExecutor(16) as pool:
        got = np.array(list(pool.map(one, TEXTS)), dtype=np.float32)
    want = MultimodalEmbeddingProvider(text_model=real_minilm_parquet).encode(TEXTS)
    cos = np.einsum("ij,ij->i", got, want)
    assert cos.min() >= 0.9999


def test_whisper_transcribes_speech_as_srt(client, tmp_path):
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng (Debian package) is not installed")
    wav = tmp_path / "s.wav"
    subprocess.run([espeak, "-w", str(wav), "The weather is lovely today."], check=True)
    srt = client.audio.transcriptions.create(model="whisper", file=wav.open("rb"),
                                             response_format="srt")  # fmt: skip
    text = srt if isinstance(srt, str) else srt.text
    assert (
        text.startswith("1\n00:00:0") and "lovely" in text.lower()
    )  # tiny.en hears espeak roughly


def test_smollm2_stream_equals_plain(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16,
                                           temperature=0).choices[0].message.content  # fmt: skip
    stream = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16,
                                            temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream) == plain
    assert "Paris" in plain
