"""Request bodies. Range checks follow SPEC §6; a violation becomes a 422 whose message
names the field and says what is allowed."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_NEW_TOKENS = 768


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """POST /chat (SPEC §6)."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    max_new_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict[str, Any]] | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ("user", "assistant"):
            raise ValueError(f"role {v!r} is not supported; this model has no system prompt, "
                             "use only 'user' and 'assistant'")
        return v

    def text(self) -> str:
        """Plain text of the message; OpenAI content parts must all be of type text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/chat/completions: the subset of the OpenAI API this model can honour.
    Unknown extra fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v:
            raise ValueError("custom stop sequences are not supported; the model stops at <|end|>")
        return v
