"""``/v1/chat/completions`` (plain or server-sent events) and ``/v1/audio/transcriptions``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, StreamingResponse

from .batching import QueueFull
from .engines import Engines, model_id
from .errors import APIError, from_exception
from .inputs import audio_from_bytes
from .routes_embed import within
from .schemas import ChatRequest

router = APIRouter()


class _Admit:
    """At most ``max_queue`` requests per model in flight; the next gets 503 + Retry-After."""

    def __init__(self, eng: Engines, role: str) -> None:
        self.eng, self.role = eng, role

    def __enter__(self):
        if self.eng.inflight[self.role] >= self.eng.cfg.max_queue:
            raise QueueFull(self.role, self.eng.cfg.max_queue)
        self.eng.inflight[self.role] += 1

    def __exit__(self, *exc) -> None:
        self.eng.inflight[self.role] -= 1


def _messages(body: ChatRequest) -> list[dict[str, str]]:
    out = []
    for m in body.messages:
        content = m.content if isinstance(m.content, str) else "".join(
            part.get("text", "") for part in (m.content or []) if part.get("type") == "text")  # fmt: skip
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return out


def _options(eng: Engines, body: ChatRequest) -> dict[str, Any]:
    wanted = body.max_completion_tokens or body.max_tokens or 128
    return {"chat": True, "max_new_tokens": min(wanted, eng.cfg.max_new_tokens),
            "temperature": body.temperature, "top_p": body.top_p, "stop": body.stop,
            "seed": body.seed}  # fmt: skip


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    eng: Engines = request.app.state.engines
    llm = await within(eng, eng.run(eng.llm_pool, lambda: eng.loaded_model("llm")))
    messages, opts = _messages(body), _options(eng, body)
    name, cid = model_id(eng.cfg.llm), f"chatcmpl-{uuid.uuid4().hex[:24]}"
    prompt_tokens = len(llm.tokenizer.encode(llm.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True), add_special_tokens=False))  # fmt: skip
    if body.stream:
        eng_admit = _Admit(eng, "llm")
        eng_admit.__enter__()
        pieces = _stream_pieces(eng, llm, messages, opts)
        events = _sse(pieces, cid, name, eng_admit)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip
    with _Admit(eng, "llm"):
        text = await within(eng, eng.run(eng.llm_pool, lambda: llm.generate(messages, **opts)))
    completion = len(llm.tokenizer.encode(text, add_special_tokens=False)) if text else 0
    finish = "length" if completion >= opts["max_new_tokens"] else "stop"
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}}  # fmt: skip


async def _stream_pieces(eng: Engines, llm, messages, opts) -> AsyncIterator[str]:
    """Pieces of ``llm.stream`` produced in the LLM thread, handed over through a queue."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for piece in llm.stream(messages, **opts):
                if stop.is_set():  # the client went away or the request timed out
                    break
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        except Exception as e:
            loop.call_soon_threadsafe(queue.put_nowait, e)
        loop.call_soon_threadsafe(queue.put_nowait, done)

    loop.run_in_executor(eng.llm_pool, produce)
    deadline = loop.time() + eng.cfg.request_timeout
    try:
        while True:
            item = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
            if item is done:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()


async def _sse(pieces: AsyncGenerator[str, None], cid: str, name: str | None, admit: _Admit):
    def event(delta: dict[str, Any], finish: str | None) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": name, "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""}, None)
        async for piece in pieces:
            yield event({"content": piece}, None)
        yield event({}, "stop")
    except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does
        err = from_exception(e)
        yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind}})}\n\n"
    finally:  # also when the client goes away: the LLM thread stops at its next token
        await pieces.aclose()
        admit.__exit__()
    yield "data: [DONE]\n\n"


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, file: UploadFile = File(...),  # noqa: B008
                         model: str = Form(""), language: str | None = Form(None),
                         response_format: str = Form("json")):  # fmt: skip
    eng: Engines = request.app.state.engines
    if response_format not in ("json", "text", "srt", "vtt", "verbose_json"):
        raise APIError(400, f"response_format must be json, text, srt or vtt, got "
                       f"{response_format!r}", param="response_format")  # fmt: skip
    wave, rate = audio_from_bytes(await file.read())
    plain = response_format in ("json", "text")  # HF's plain greedy text; the rest need segments
    with _Admit(eng, "audio"):
        whisper = await within(eng, eng.run(eng.asr_pool, lambda: eng.loaded_model("audio")))
        decode = whisper.transcribe if plain else whisper.transcribe_segments
        result = await within(eng, eng.run(eng.asr_pool, lambda: decode(
            wave, sample_rate=rate, language=language or None)))  # fmt: skip
    if plain:
        return {"text": result} if response_format == "json" else PlainTextResponse(result)
    return _transcript(result, response_format)


SUBTITLE_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}


def _transcript(transcript, fmt: str):
    """A ``Transcript`` as OpenAI's verbose_json (segments), srt or vtt response."""
    if fmt == "verbose_json":
        return transcript.as_dict()
    return PlainTextResponse(transcript.subtitles(fmt), media_type=SUBTITLE_TYPES[fmt])
