"""The two chat backends behind `ChatClient`.

`OpenAIBackend` talks to any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM serving
the teacher of `sky/teacher.yaml`, llama.cpp's server, OpenAI) over httpx. `OfflineBackend` is
the deterministic rule system of `offline.py`: no network and no model. Both receive the same
requests. The API key comes from the environment only and is never logged or written (the cache
key covers the request body, not the headers). Error messages name the HTTP status and what to
check, never the response body: a server may echo the request's headers or key back in it.
"""
from __future__ import annotations

import os
from typing import Any

import httpx

from wikigpt_core.llm import offline, prompts
from wikigpt_core.llm.contract import Completion, RetryableError, TeacherAuthError, TeacherError

KEY_FALLBACK_ENV = "OPENAI_API_KEY"
"""Read when the configured key variable is unset (the OpenAI client's own variable)."""
AUTH_REFUSED = (401, 403)


class OfflineBackend:
    """The built-in deterministic rule teacher/judge (no network, not a language model)."""

    model = "wikigpt-offline-rules-v1"
    backend_id = f"offline:{model}"

    def complete(self, body: dict[str, Any]) -> Completion:
        try:
            out = offline.reply(body)
        except (KeyError, prompts.ReplyFormatError) as e:
            raise TeacherError(f"offline teacher cannot answer this request: {e}") from None
        return Completion(out["text"], out["prompt_tokens"], out["completion_tokens"])


class OpenAIBackend:
    """POST {base_url}/chat/completions on an OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, *, timeout_s: float = 120.0,
                 api_key_env: str = "WIKIGPT_TEACHER_API_KEY", max_connections: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.backend_id = f"openai:{self.base_url}:{model}"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) or os.environ.get(KEY_FALLBACK_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(timeout=timeout_s, headers=headers, limits=limits)

    def complete(self, body: dict[str, Any]) -> Completion:
        url = f"{self.base_url}/chat/completions"
        try:
            r = self._http.post(url, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise RetryableError(f"{url}: {type(e).__name__}") from None
        if r.status_code in AUTH_REFUSED:
            raise TeacherAuthError(
                f"{url} refused the API key (HTTP {r.status_code}); set {self.api_key_env} (or "
                f"{KEY_FALLBACK_ENV}) to the key the endpoint expects (for a rented teacher, the "
                "VLLM_API_KEY it was started with). No further request was sent.")
        if r.status_code == 429 or r.status_code >= 500:
            raise RetryableError(f"{url} answered HTTP {r.status_code}{_format_hint(body, r.text)}")
        if r.status_code != 200:
            # Any other 4xx is deterministic (bad model name, a prompt too long for the
            # context): sending it again would fail the same way and cost the same.
            raise TeacherError(
                f"{url} answered HTTP {r.status_code}; check teacher.base_url and teacher.model "
                f"({self.model!r}){_format_hint(body, r.text)}")
        try:
            data = r.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError(f"{url} sent a malformed completion ({len(r.content)} bytes, "
                                 "not an OpenAI chat completion)") from None
        usage = data.get("usage") or {}
        return Completion(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    def close(self) -> None:
        self._http.close()


def _format_hint(body: dict[str, Any], error: str) -> str:
    """Which setting to change when an endpoint refused the request's response_format (some
    answer 4xx, llama-cpp-python's server answers 500 to a type it does not know)."""
    if "response_format" not in body or "response_format" not in error:
        return ""
    return (" (the endpoint refused this response_format: teacher.schema_format = 'json_object' suits "
            "llama-cpp-python's server, 'json_schema' vLLM and llama-server; teacher.json_schema = false "
            "sends no schema)")
