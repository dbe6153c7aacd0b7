"""HTTP errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Typed library errors map to a status code; anything else is a 500 whose body names no internals
(the traceback goes to the server log only).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E

log = logging.getLogger(__name__)

# most specific first: the first matching class decides the status
STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (E.StoreBusyError, 503, "server_busy"),
    (E.ModelFileNotFoundError, 404, "not_found"),
    (E.StoreNotFoundError, 404, "not_found"),
    (E.IdNotFoundError, 404, "not_found"),
    (E.ConfigError, 400, "invalid_request_error"),
    (E.InputError, 400, "invalid_request_error"),
    (E.WrongFamilyError, 400, "invalid_request_error"),
    (E.InvalidFilterError, 400, "invalid_request_error"),
    (E.InvalidEmbeddingError, 400, "invalid_request_error"),
    (E.SchemaMismatchError, 400, "invalid_request_error"),
    (E.LLMCompressionError, 500, "server_error"),
)


class APIError(Exception):
    """An error the server answers with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    body = error_body(err.message, err.kind, err.param, err.code)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def from_exception(exc: BaseException) -> APIError:
    """The ``APIError`` of any exception (typed library errors keep their message)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TimeoutError) and not isinstance(exc, E.LLMCompressionError):
        return APIError(504, "the request took longer than the server's per-request timeout",
                        kind="timeout", code="timeout")  # fmt: skip
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            message = str(exc) if status < 500 else f"{cls.__name__}: {exc}"
            headers = {"Retry-After": "1"} if status == 503 else None
            return APIError(status, message, kind=kind, headers=headers)
    log.exception("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "internal server error (see the server log)", kind="server_error")


def install(app: FastAPI) -> None:
    """Every error, including FastAPI's own 404/405/422, answers in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), kind=kind))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"
        return error_response(APIError(400, message, param=where or None))

    @app.exception_handler(E.LLMCompressionError)
    async def _typed(_: Request, exc: E.LLMCompressionError):  # a 4xx: no traceback in the log
        return error_response(from_exception(exc))

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception):  # a bug: 500, the traceback only in the log
        return error_response(from_exception(exc))
