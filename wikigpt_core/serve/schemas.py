"""Request bodies. `/chat` follows docs/reference.md ("Serving"; a violation is a 422 naming
the field). The
OpenAI-compatible bodies accept exactly what this server implements: any other field (tools,
response_format, penalties other than 0, ...) is refused with a 400 that names it, so no
client setting is ever silently ignored.

Bounds match the types underneath: a seed is what a 64-bit generator takes, and text must be
valid Unicode (JSON can spell an unpaired UTF-16 surrogate, "\\ud800", which no UTF-8 encoder
or tokenizer accepts), so a bad value is a 4xx naming the field, never a failure later on."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from wikigpt_core.generation.batch import MAX_SEED

MAX_NEW_TOKENS = 768
MAX_N = 8
"""Choices per request (each decodes as its own sequence in the batch)."""
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20


def valid_text(value: str) -> str:
    """`value` unchanged if it is valid Unicode; else a ValueError pointing at the surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains an unpaired UTF-16 surrogate (\\u{ord(value[e.start]):04x} at "
                         f"character {e.start}); send valid Unicode text") from None
    return value


def valid_texts(value: Any) -> Any:
    """`valid_text` on a string or on each string of a list (union fields: one message)."""
    for item in [value] if isinstance(value, str) else value if isinstance(value, list) else ():
        if isinstance(item, str):
            valid_text(item)
    return value


Text = Annotated[str, AfterValidator(valid_text)]
Seed = Annotated[int | None, Field(None, ge=0, lt=MAX_SEED)]
"""0 <= seed < 2**63: what the per-sequence generator takes."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRequest(BaseModel):
    """POST /chat."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    max_new_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: Seed = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict[str, Any]] | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        valid_text(v)
        if v == "developer":  # OpenAI's newer name for the system role
            return "system"
        if v not in ("system", "user", "assistant"):
            raise ValueError(f"role {v!r} is not supported; use 'system' (first only), 'user' and "
                             "'assistant' (tools and function calls are not implemented)")
        return v

    _content = field_validator("content")(valid_texts)

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
            parts.append(valid_text(part["text"]))
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both OpenAI endpoints share."""

    model_config = ConfigDict(extra="forbid")
    model: Text | None = None
    """Echoed back as the served model's name; this server serves one model."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Seed = None
    stop: str | list[str] | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: Text | None = None
    """An end-user label for the caller's own logs; it never changes the output."""

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        valid_texts(v)
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"give at most {MAX_STOP} non-empty stop strings")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0:
            raise ValueError("penalties are not implemented; leave it at 0")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: Any) -> Any:
        if v:
            raise ValueError("logit_bias is not implemented")
        return v

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class TextCompletionRequest(_Sampling):
    """POST /v1/completions: raw text (or token ids) continued, optionally echoed and scored."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0, le=MAX_NEW_TOKENS)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """Log-probabilities of the tokens, plus this many alternatives each."""

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return valid_texts(v)

    @model_validator(mode="after")
    def _zero_tokens_needs_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 only makes sense with echo: true (to score the prompt)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: strings or token-id lists."""
        v = self.prompt
        if isinstance(v, str):
            return [v]
        if all(isinstance(x, int) for x in v):
            return [list(v)]
        return list(v)
