"""``/v1/embeddings`` and ``/v1/search``: every query embedded through the batchers."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from ..errors import InputError
from .engines import Engines, model_id
from .errors import APIError
from .inputs import input_items
from .previews import hit_json
from .schemas import EmbeddingsRequest, SearchRequest

router = APIRouter()
CLIP_SPACES = ("clip", "image", "video")  # tables whose text queries go through CLIP's text tower


def _engines(request: Request) -> Engines:
    return request.app.state.engines


async def within(engines: Engines, coro) -> Any:
    """``coro`` under the per-request timeout (504 past it)."""
    return await asyncio.wait_for(coro, engines.cfg.request_timeout)


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    eng = _engines(request)
    kind, items = input_items(body.input, eng.cfg.max_inputs)
    batcher, path = _text_route(eng, body.model) if kind == "text" else (kind, _path(eng, kind))
    tokens = _check_tokens(eng, items, path) if kind == "text" else [0] * len(items)
    vectors = np.asarray(await within(eng, eng.embed(batcher, items)), dtype=np.float32)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise APIError(400, f"dimensions={body.dimensions} is not supported: {model_id(path)} "
                       f"gives {vectors.shape[1]}-d vectors; leave dimensions out", param="dimensions")  # fmt: skip
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)]  # fmt: skip
    usage = {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}
    return {"object": "list", "data": data, "model": model_id(path),
            "dimensions": int(vectors.shape[1]), "modality": kind, "usage": usage}  # fmt: skip


def _text_route(eng: Engines, model: str) -> tuple[str, Any]:
    """Texts go through the text model, or CLIP's text tower when the request names CLIP."""
    if eng.cfg.clip_model is not None and model == model_id(eng.cfg.clip_model):
        return "clip_text", eng.cfg.clip_model
    return "text", eng.cfg.text_model or eng.cfg.clip_model


def _path(eng: Engines, kind: str):
    path = eng.cfg.clip_model if kind == "image" else eng.cfg.audio_model
    eng.need_provider(kind)
    return path


def _check_tokens(eng: Engines, texts: list[str], path) -> list[int]:
    counts = eng.token_count(texts, path)
    for i, n in enumerate(counts):
        if n > eng.cfg.max_input_tokens:
            raise APIError(400, f"input {i} has {n} tokens, more than this server's limit of "
                           f"{eng.cfg.max_input_tokens}; shorten it", param="input",
                           code="context_length_exceeded")  # fmt: skip
    return counts


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":  # OpenAI's: little-endian float32 bytes, base64
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/search")
async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
    eng = _engines(request)
    if eng.store is None:
        raise APIError(404, "no store here: start the server with --store STORE",
                       kind="not_found")  # fmt: skip
    kind, items = input_items(body.query, 1)
    k = min(body.k, eng.cfg.max_k)
    tables = _tables(eng, kind, body.modality)
    hits: list[dict[str, Any]] = []
    failures: list[Exception] = []
    for table in tables:
        try:
            hits += await _search_table(eng, kind, items, table, k, body.where)
        except (APIError, InputError) as e:  # a table this server has no model for
            if len(tables) == 1:
                raise
            failures.append(e)
    if failures and len(failures) == len(tables):
        raise failures[0]
    hits.sort(key=lambda h: -h["score"])
    return {"object": "list", "query_modality": kind, "tables": tables, "data": hits[:k]}


async def _search_table(eng: Engines, kind: str, items, table: str, k: int, where):
    batcher = "clip_text" if kind == "text" and table in CLIP_SPACES else kind
    vector = (await within(eng, eng.embed(batcher, items)))[0]
    found = await within(eng, asyncio.to_thread(
        eng.store.search, np.asarray(vector), k=k, modality=table, where=where))  # fmt: skip
    return [hit_json(eng.store, table, hit) for hit in found]


def _tables(eng: Engines, kind: str, modality: str | None) -> list[str]:
    """The store's tables a ``kind`` query can search (those in its model's space)."""
    reach = {"text": ("text", "clip", "image", "video"), "image": ("image", "clip", "video"),
             "audio": ("audio",)}[kind]  # fmt: skip
    have = set(eng.store.modalities)
    wanted = [t for t in reach if t in have and (modality is None or t == modality)]
    if not wanted:
        raise InputError(f"a {kind} query cannot search "
                         f"{'the ' + modality + ' table' if modality else 'this store'}: the store "
                         f"has tables {sorted(have)}, a {kind} query reaches {list(reach)}")  # fmt: skip
    return wanted
