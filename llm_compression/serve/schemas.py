"""Request bodies (OpenAI's fields; unknown fields are ignored as OpenAI's servers do)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class EmbeddingsRequest(BaseModel):
    input: Any
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)


class SearchRequest(BaseModel):
    query: str | dict[str, str]
    k: int = Field(default=10, ge=1)
    where: str | dict[str, Any] | None = None
    modality: Literal["text", "image", "audio", "video", "clip"] | None = None
