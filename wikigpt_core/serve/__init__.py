"""Serving a release: FastAPI app (SSE /chat, OpenAI-compatible /v1), KV-cache engine with a
bounded queue, UTF-8-safe streaming, and the `wikigpt serve` / `wikigpt chat` entry points."""
