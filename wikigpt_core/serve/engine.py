"""The generation engine behind the HTTP server.

One worker thread owns the model and runs one request at a time with the KV cache, so
concurrent requests can never mix their tokens or sampler state. Requests wait in a bounded
queue; when it is full, `submit` raises `QueueFull` (the server answers 503). Each request gets
its own asyncio queue of events (text deltas, then a final `Done`), fed thread-safely.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wikigpt_core.chat import ChatFormatError, render_prompt, validate_messages
from wikigpt_core.serve.streaming import IncrementalDecoder
from wikigpt_core.tokenizer import WikiTokenizer

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The request queue is at capacity; retry later."""


@dataclass
class Params:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None


@dataclass
class Done:
    """Final event of a request."""

    finish_reason: str  # "stop" (<|end|> produced) or "length" (max_new_tokens reached)
    prompt_tokens: int
    completion_tokens: int
    cropped_tokens: int
    error: str | None = None


@dataclass
class Job:
    ids: list[int]
    params: Params
    cropped: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


MAX_CHARS = 1_000_000
"""Largest conversation accepted, in characters (the model only ever sees its tail)."""


def crop_prompt(messages: list[dict[str, str]], tok: WikiTokenizer, budget: int) -> tuple[list[int], int]:
    """Render the conversation into at most `budget` ids, cropping from the left: first whole
    earlier exchanges are dropped (so the model still sees well-formed turns), then, if the
    last user turn alone is too long, its oldest tokens. Returns (ids, tokens cropped)."""
    # Each turn renders as <|role|> content <|end|>, plus one final <|assistant|>: count tokens
    # per turn once, then render only the suffix that fits.
    sizes = [len(ids) + 2 for ids in tok.encode_batch([m["content"] for m in messages])]
    total = sum(sizes) + 1
    start, kept = 0, total
    while kept > budget and start + 2 < len(messages):
        kept -= sizes[start] + sizes[start + 1]  # drop the oldest user/assistant exchange
        start += 2
    ids = render_prompt(messages[start:], tok)
    assert len(ids) == kept, "turn sizes disagree with the chat template"
    if len(ids) > budget:
        ids = ids[-budget:]
    return ids, total - len(ids)


class Engine:
    """Loads nothing itself: give it a core GPT and its tokenizer (see `Engine.from_release`)."""

    def __init__(self, model: torch.nn.Module, tok: WikiTokenizer, *, name: str = "wikigpt",
                 max_queue: int = 16) -> None:
        self.model = model.eval()
        self.tok = tok
        self.name = name
        self.block_size = int(model.config.block_size)
        self.stop_ids = [tok.end_id, tok.doc_id]
        self.max_queue = max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._busy = threading.Event()
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}
        self._worker = threading.Thread(target=self._run, name="wikigpt-generate", daemon=True)
        self.started = time.time()
        self._worker.start()

    @classmethod
    def from_release(cls, release_dir: Path, *, max_queue: int = 16, name: str | None = None) -> "Engine":
        from wikigpt_core.release.hf_export import load_release_model

        model = load_release_model(release_dir)
        tok = WikiTokenizer.load(release_dir)
        return cls(model, tok, name=name or release_name(release_dir), max_queue=max_queue)

    # -- request side (event loop thread) ---------------------------------------------------
    def prompt_budget(self, max_new_tokens: int) -> int:
        """Prompt tokens allowed so the reply fits the context; at least a quarter of it."""
        return max(self.block_size - max_new_tokens, self.block_size // 4)

    def submit(self, messages: list[dict[str, str]], params: Params) -> Job:
        """Render, crop and enqueue; raises ChatFormatError (bad messages) or QueueFull."""
        validate_messages(messages, for_generation=True)
        chars = sum(len(m["content"]) for m in messages)
        if chars > MAX_CHARS:
            raise ChatFormatError(f"the conversation has {chars:,} characters; the limit is "
                                  f"{MAX_CHARS:,} (only the last {self.block_size} tokens are used anyway)")
        ids, cropped = crop_prompt(messages, self.tok, self.prompt_budget(params.max_new_tokens))
        job = Job(ids=ids, params=params, cropped=cropped, loop=asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.max_queue} requests are already waiting; retry shortly") from None
        return job

    def stats(self) -> dict[str, Any]:
        return {"waiting": self._queue.qsize(), "capacity": self.max_queue, "busy": self._busy.is_set(),
                **self.counts}

    def close(self) -> None:
        self._queue.put(None)

    # -- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled.is_set():  # the client left while waiting
                self.counts["cancelled"] += 1
                continue
            self._busy.set()
            try:
                finish = self._generate(job)
                self.counts["cancelled" if finish == "cancelled" else "completed"] += 1
            except Exception as e:  # report to this request only; the server keeps serving
                log.exception("generation failed")
                self.counts["failed"] += 1
                job.emit(Done("error", len(job.ids), 0, job.cropped, error=f"{type(e).__name__}: {e}"))
            finally:
                self._busy.clear()

    def _generate(self, job: Job) -> str:
        p = job.params
        gen = None
        if p.seed is not None:
            gen = torch.Generator().manual_seed(int(p.seed))
        decoder = IncrementalDecoder(self.tok)
        finish, count = "length", 0
        idx = torch.tensor([job.ids], dtype=torch.long)
        for token in self.model.generate_stream(idx, p.max_new_tokens, temperature=p.temperature,
                                                top_p=p.top_p, stop_ids=self.stop_ids,
                                                use_cache=True, generator=gen):
            count += 1
            if token in self.stop_ids:
                finish = "stop"  # never emitted as text
                break
            delta = decoder.push(token)
            if delta:
                job.emit(delta)
            if job.cancelled.is_set():
                finish = "cancelled"
                break
        tail = decoder.finish()
        if tail:
            job.emit(tail)
        job.emit(Done(finish, len(job.ids), count, job.cropped))
        return finish


def release_name(release_dir: Path) -> str:
    """Model id to report: the release config's repo name, else the folder name."""
    manifest = Path(release_dir) / "run_manifest.json"
    try:
        return json.loads(manifest.read_text())["release_config"]["repo_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return Path(release_dir).resolve().name
