"""An OpenAI-compatible HTTP server with dynamic batching, and a search page (docs/serve.md).

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart). Never imports ``transformers``.
"""

from .app import create_app
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
