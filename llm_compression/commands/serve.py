"""`llm-compression serve`: the OpenAI-compatible HTTP API and the search page (docs/serve.md)."""

from __future__ import annotations

import argparse

from .compute_options import add_compute_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve embeddings, chat, transcription and search over HTTP (OpenAI-compatible)",
        description="An OpenAI-compatible HTTP API (/v1/embeddings, /v1/chat/completions, "
        "/v1/audio/transcriptions, /v1/search, /v1/models, /health, /metrics) and a search page "
        "at /. Binds 127.0.0.1 unless told otherwise. Needs the 'serve' extra.",
    )
    parser.add_argument("--text-model", help="a text embedding weight file (MiniLM)")
    parser.add_argument("--clip-model", help="a CLIP weight file (images, and text in CLIP space)")
    parser.add_argument(
        "--audio-model", help="a Whisper weight file (audio embeddings, transcripts)"
    )
    parser.add_argument("--llm", help="a causal LM weight file (chat completions)")
    add_compute_options(parser)
    parser.add_argument(
        "--llm-dtype", default="float32", choices=["float32", "int8", "int4"],
        help="the LLM computes from float32 (default) or its int8 / int4 weights (ONNX Runtime)",
    )  # fmt: skip
    parser.add_argument(
        "--llm-backend", default="torch", choices=["torch", "onnxruntime"],
        help="the LLM's float32 on torch (default, exact) or on ONNX Runtime's decoder graph",
    )  # fmt: skip
    parser.add_argument("--store", help="an embedding store to search (its models by default)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /metrics")
    parser.add_argument("--max-batch", type=int, default=32, help="items per model call (32)")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to batch with (5 ms)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting per model before 503 (64)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (60 s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ConfigError, ModelFileNotFoundError

    try:
        import uvicorn

        from ..serve import ServeConfig, create_app
    except ImportError as e:
        raise ConfigError(
            f"serve needs the 'serve' extra ({e.name} is missing): "
            "pip install 'llm_compression[serve]'"
        ) from e
    paths = {
        k: getattr(args, k) for k in ("text_model", "clip_model", "audio_model", "llm", "store")
    }
    for key, value in paths.items():
        if value is not None and not Path(value).exists():
            raise ModelFileNotFoundError(f"--{key.replace('_', '-')} {value} does not exist")
    cfg = ServeConfig(**{k: Path(v) if v else None for k, v in paths.items()},
                      api_key=args.api_key, max_batch=args.max_batch,
                      max_wait=args.max_wait_ms / 1000, max_queue=args.max_queue,
                      request_timeout=args.timeout, dtype=args.dtype, backend=args.backend,
                      llm_dtype=args.llm_dtype, llm_backend=args.llm_backend)  # fmt: skip
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning")
    return 0
