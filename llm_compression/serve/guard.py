"""ASGI middleware: API key, body size limit (413), request metrics; errors in OpenAI's shape.

Pure ASGI (not ``BaseHTTPMiddleware``), so streamed responses pass through untouched and a body
is refused once it passes the limit, so at most ``max_body`` bytes are ever held.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from .errors import error_body
from .metrics import Metrics

OPEN_PATHS = ("/", "/health", "/favicon.ico")  # the page and liveness need no key
OPEN_PREFIXES = ("/static/",)


class Guard:
    def __init__(self, app: Any, *, api_key: str | None, max_body: int, metrics: Metrics) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_status)
        finally:
            route = _route_label(scope)
            self.metrics.observe_request(route, scope["method"], status["code"],
                                         time.perf_counter() - start)  # fmt: skip

    async def _guarded(self, scope, receive, send) -> None:
        path = scope["path"]
        is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if self.api_key and not is_open and not self._authorized(scope):
            return await _reply(send, 401, "missing or wrong API key: send the header "
                                "'Authorization: Bearer <key>'", "invalid_api_key",
                                {"www-authenticate": "Bearer"})  # fmt: skip
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _reply(send, 413, self._too_large(), "request_too_large")
        body = await self._read_body(receive)
        if body is None:
            return await _reply(send, 413, self._too_large(), "request_too_large")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then http.disconnect, when the client goes away

        await self.app(scope, replay, send)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body (at most ``max_body`` bytes: a chunked one is cut off), else None."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorized(self, scope) -> bool:
        given = _header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and token.strip()
        return bool(ok) and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _too_large(self) -> str:
        return (f"the request body is larger than this server's limit of {self.max_body} bytes; "
                "send fewer or smaller inputs per request")  # fmt: skip


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _route_label(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if path else "unmatched"


async def _reply(send, status: int, message: str, code: str, headers=None) -> None:
    kind = "invalid_request_error" if status != 401 else "authentication_error"
    body = json.dumps(error_body(message, kind, None, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
