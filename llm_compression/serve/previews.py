"""What the search page shows of a hit: a text snippet, or a URL of the row's image / audio.

Only files a store row names as its ``source`` are ever read (``GET /v1/media``): clients name a
row (table and id), never a path.
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from .errors import APIError

router = APIRouter()
SNIPPET_CHARS = 300
READ_BYTES = 64 * 1024  # of a text source, for its snippet
MEDIA_TABLES = ("image", "audio", "video", "clip")


def hit_json(store: Any, table: str, hit: Any) -> dict[str, Any]:
    metadata = hit.metadata if isinstance(hit.metadata, dict) else {}
    out = {"id": hit.id, "score": float(hit.score), "modality": table,
           "source": Path(hit.source).name if hit.source else None,
           "metadata": _jsonable(metadata)}  # fmt: skip
    kind = _media_kind(hit.source)
    if table in MEDIA_TABLES and kind:
        out["media"] = {
            "kind": kind,
            "url": f"/v1/media?modality={table}&id={quote(hit.id, safe='')}",
        }
    else:
        out["snippet"] = _snippet(hit.source, metadata)
    return out


def _media_kind(source: str | None) -> str | None:
    mime = mimetypes.guess_type(source or "")[0] or ""
    major = mime.split("/")[0]
    return major if major in ("image", "audio", "video") else None


def _snippet(source: str | None, metadata: dict[str, Any]) -> str | None:
    if isinstance(metadata.get("text"), str):
        return metadata["text"][:SNIPPET_CHARS]
    if not source or not Path(source).is_file():
        return None
    try:
        with open(source, "rb") as f:
            text = f.read(READ_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    line = metadata.get("line")
    if isinstance(line, int) and source.endswith(".jsonl"):
        return _jsonl_line(text, line)
    return text[:SNIPPET_CHARS]


def _jsonl_line(text: str, line: int) -> str | None:
    lines = text.splitlines()
    for n in (line, line - 1):  # 1-based or 0-based numbering
        if 0 <= n < len(lines):
            try:
                value = json.loads(lines[n]).get("text")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, str):
                return value[:SNIPPET_CHARS]
    return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@router.get("/v1/media")
async def media(request: Request, modality: str = Query(...), id: str = Query(...)):
    """The file a store row was embedded from (images and audio only)."""
    store = request.app.state.engines.store
    if store is None or modality not in MEDIA_TABLES or modality not in store.modalities:
        raise APIError(404, f"no {modality!r} table here", kind="not_found")
    rows = store.get([id], modality=modality).to_pylist()
    source = rows[0].get("source") if rows else None
    if not source or not _media_kind(source) or not Path(source).is_file():
        raise APIError(404, f"row {id!r} has no image or audio file to show", kind="not_found")
    return FileResponse(source, media_type=mimetypes.guess_type(source)[0])
