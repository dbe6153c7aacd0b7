"""A uvicorn server on 127.0.0.1 (a free port, in a thread, stopped by the context manager)."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

START_TIMEOUT = 20.0  # seconds for uvicorn to start listening


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, *, port: int | None = None):
    """Serve ``app`` on ``http://127.0.0.1:PORT`` until the block ends; yields the base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(wave: np.ndarray, rate: int = 16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV")
    return buf.getvalue()


def tiny_llm_file(folder: Path) -> Path:
    """A tiny random Llama with a chat template, as a weight file."""
    from hf_tiny import tiny_causal_lm, tiny_tokenizer_files

    from llm_compression.preprocess.text import Tokenizer
    from llm_compression.weightfile import write_model

    path = folder / "tiny-llama.parquet"
    if not path.exists():
        files = tiny_tokenizer_files()
        vocab = Tokenizer.from_files(files).vocab_size
        _, cfg, state = tiny_causal_lm("llama", tie=True, vocab_size=vocab, seed=4)
        tensors = {k: v.numpy() for k, v in state.items()}
        write_model(path, tensors, config=cfg, dtype="float32", files=files)
    return path


def build_store(root: Path, files: dict[str, Path]) -> Path:
    """A store with 4 text rows (MiniLM) and 3 image rows (CLIP), sources on disk."""
    from provider_helpers import photo

    from llm_compression.tables import MultimodalStorage

    path = root / "store"
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    texts = {"cat": "a cat sleeping on a sofa", "rocket": "a rocket launching into space",
             "coffee": "a cup of hot coffee", "horse": "a brown horse in a field"}  # fmt: skip
    paths = []
    for name, text in texts.items():
        (docs / f"{name}.txt").write_text(text)
        paths.append(docs / f"{name}.txt")
    for name in ("chelsea", "rocket", "coffee"):
        from PIL import Image

        Image.fromarray(photo(name)).resize((64, 64)).save(docs / f"{name}.png")
        paths.append(docs / f"{name}.png")
    store = MultimodalStorage(path, text_model=files["bert"], clip_model=files["clip"])
    report = store.add_files(paths)
    assert not store.failures(), report
    store.remember_models()  # as `llm-compression index` does: `serve --store` needs no model flags
    return path
