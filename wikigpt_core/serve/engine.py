"""The generation engine behind the HTTP server: continuous batching on one worker thread.

The worker owns the model and a `BatchDecoder`: every step decodes one token for all running
sequences together, new requests join between steps and finished or cancelled ones leave,
so concurrent requests share the model without waiting for each other and never mix their
tokens or sampler state (each sequence has its own seeded generator). At most `max_batch`
sequences decode at once; `max_queue` more may wait; beyond that `submit` raises `QueueFull`
(the server answers 503). Each request gets an asyncio queue of events (`Delta`s, then one
`Done` per choice), fed thread-safely.

One request never harms another: a sequence that fails to start or to decode fails alone (its
`Done` carries the error), and a failure of a whole batched step fails only the requests in
that batch. Should the worker thread itself ever stop on an unexpected error, the engine says
so (`dead`, shown by /health), fails every request it holds and refuses new ones, so nothing
waits forever for a thread that is gone.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from wikigpt_core.chat import ChatFormatError, render_prompt
from wikigpt_core.generation import (BatchDecoder, SamplingParams, Sequence, TokenLogprob,
                                     crop_conversation, prompt_budget)
from wikigpt_core.generation.batch import MAX_SEED
from wikigpt_core.tokenizer import WikiTokenizer

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The request queue is at capacity; retry later."""


class EngineDead(RuntimeError):
    """The generation worker has stopped; the server must be restarted."""


class BadPrompt(ValueError):
    """A raw prompt the model cannot read (empty, or ids outside the vocabulary)."""


class PromptTooLong(ValueError):
    """A prompt that does not fit the context with its token budget (OpenAI's and vLLM's
    `context_length_exceeded`)."""

    code = "context_length_exceeded"


def Params(max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
           seed: int | None = None, **more: Any) -> SamplingParams:
    """Positional shorthand for `SamplingParams` (max_new_tokens, temperature, top_p, seed)."""
    return SamplingParams(max_new_tokens, temperature, top_p, seed, **more)


@dataclass
class Delta:
    """New text (and the logprobs of the tokens it shows, when asked) of choice `index`. The
    first event of a choice that scores its prompt carries `prompt_logprobs`."""

    text: str
    index: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class Done:
    """Final event of one choice."""

    finish_reason: str  # "stop" (stop token or string), "length", "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    cropped_tokens: int
    error: str | None = None
    index: int = 0
    tokens: list[int] = field(default_factory=list)
    """The generated ids, a final stop token included."""
    unshown_logprobs: list[TokenLogprob] = field(default_factory=list)
    """Logprobs of trailing tokens no text followed (a partial character, a special)."""
    stop_logprob: TokenLogprob | None = None
    """The final stop token's log-probability (when asked), which no `Delta` carries."""


@dataclass(eq=False)
class Job:
    ids: list[int]
    params: SamplingParams
    cropped: int
    loop: asyncio.AbstractEventLoop
    n: int = 1
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: set[int] = field(default_factory=set)
    """Indices of the choices whose `Done` has been sent."""

    def emit(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


MAX_CHARS = 1_000_000
"""Largest conversation accepted, in characters (the model only ever sees its tail)."""


class Engine:
    """Loads nothing itself: give it a core GPT and its tokenizer (see `Engine.from_release`)."""

    def __init__(self, model: torch.nn.Module, tok: WikiTokenizer, *, name: str = "wikigpt",
                 max_queue: int = 16, max_batch: int = 8) -> None:
        self.model = model.eval()
        self.tok = tok
        self.name = name
        self.block_size = int(model.config.block_size)
        self.max_queue, self.max_batch = max_queue, max_batch
        self._decoder = BatchDecoder(self.model, max_batch=max_batch)
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_system = 0  # sequences accepted and not yet finished
        self._open: set[Job] = set()  # jobs with a choice not yet done, wherever they are
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}
        self.peak_batch = 0  # the most sequences one step has decoded together
        self.dead: str | None = None
        """Why the worker thread stopped, if it ever did (then every request is refused)."""
        self._worker = threading.Thread(target=self._run, name="wikigpt-generate", daemon=True)
        self.started = time.time()
        self._worker.start()

    @classmethod
    def from_release(cls, release_dir: Path, *, max_queue: int = 16, max_batch: int = 8,
                     name: str | None = None) -> "Engine":
        from wikigpt_core.release.hf_export import load_release_model

        model = load_release_model(release_dir)
        tok = WikiTokenizer.load(release_dir)
        return cls(model, tok, name=name or release_name(release_dir), max_queue=max_queue,
                   max_batch=max_batch)

    # -- request side (event loop thread) ---------------------------------------------------
    def prompt_budget(self, max_new_tokens: int) -> int:
        return prompt_budget(self.block_size, max_new_tokens)

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation's prompt ids, whole (no cropping); raises ChatFormatError."""
        self._check_size(messages)
        return render_prompt(messages, self.tok)

    def submit(self, messages: list[dict[str, str]], params: SamplingParams, n: int = 1) -> Job:
        """Render, crop by whole turns (the system text kept) and enqueue a chat; raises
        ChatFormatError (bad messages, or a system text that alone fills the context) or QueueFull."""
        self._check_size(messages)
        ids, cropped = crop_conversation(messages, self.tok, self.prompt_budget(params.max_new_tokens))
        return self._enqueue(ids, params, cropped, n)

    def submit_ids(self, ids: list[int], params: SamplingParams, n: int = 1) -> Job:
        """Enqueue a prompt as is; raises BadPrompt, PromptTooLong or QueueFull."""
        if not ids:
            raise BadPrompt("the prompt is empty; give at least one token")
        if any(not 0 <= i < self.tok.vocab_size for i in ids):
            raise BadPrompt(f"prompt token ids must be in [0, {self.tok.vocab_size})")
        self.check_fits(len(ids), params.max_new_tokens)
        return self._enqueue(ids, params, 0, n)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise PromptTooLong unless the prompt and its token budget fit the context together."""
        if prompt_tokens + max_new_tokens > self.block_size:
            raise PromptTooLong(
                f"this model's context holds {self.block_size} tokens, but the request needs "
                f"{prompt_tokens + max_new_tokens}: {prompt_tokens} in the prompt and "
                f"{max_new_tokens} for the completion; shorten the prompt or lower max_tokens")

    def _check_size(self, messages: Any) -> None:
        if not isinstance(messages, list):
            return
        chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict)
                    and isinstance(m.get("content"), str))
        if chars > MAX_CHARS:
            raise ChatFormatError(f"the conversation has {chars:,} characters; the limit is "
                                  f"{MAX_CHARS:,} (only the last {self.block_size} tokens are used anyway)")

    def _enqueue(self, ids: list[int], params: SamplingParams, cropped: int, n: int) -> Job:
        job = Job(ids=ids, params=params, cropped=cropped, loop=asyncio.get_running_loop(), n=n)
        with self._lock:  # held while queueing, so a dying worker sees every job it must fail
            if self.dead is not None:
                raise EngineDead(f"the generation worker has stopped ({self.dead}); restart the server")
            if self._in_system + n > self.max_batch + self.max_queue:
                raise QueueFull(f"the batch ({self.max_batch} sequences) and the queue "
                                f"({self.max_queue} more) are full; retry shortly")
            self._in_system += n
            self._open.add(job)
            self._inbox.put(job)
        return job

    def stats(self) -> dict[str, Any]:
        with self._lock:
            in_system = self._in_system
        return {"decoding": len(self._decoder.active), "in_system": in_system,
                "max_batch": self.max_batch, "peak_batch": self.peak_batch,
                "capacity": self.max_queue, "busy": in_system > 0,
                "worker": "dead" if self.dead else "alive", **self.counts}

    def close(self) -> None:
        self._inbox.put(None)

    # -- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # a bug in the loop itself: say so rather than hang everyone
            log.exception("the generation worker stopped")
            self._die(f"{type(e).__name__}: {e}")

    def _serve(self) -> None:
        while True:
            dec = self._decoder
            try:
                job = self._inbox.get(block=not dec.busy)
            except queue.Empty:
                job = False
            while job:
                self._start(job)
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    job = False
            if job is None:
                return
            for seq in (*dec.active, *dec.waiting):
                if seq.tag[0].cancelled.is_set() and seq.finish_reason is None:
                    seq.cancel()  # the client left: the row is freed at the next step
                    self._report(seq)
            if not dec.busy:
                continue
            try:
                touched = dec.step()
            except Exception as e:  # report to the requests in flight; the server keeps serving
                log.exception("generation failed")
                self._fail_all(f"{type(e).__name__}: {e}")
                continue
            self.peak_batch = max(self.peak_batch, len(dec.active))
            for seq in touched:
                self._report(seq)

    def _start(self, job: Job) -> None:
        for i in range(job.n):
            p = job.params
            if p.seed is not None and i:
                p = replace(p, seed=(p.seed + i) % MAX_SEED)  # choices differ, each reproducible
            try:
                self._decoder.add(Sequence(job.ids, p, self.tok, tag=(job, i)))
            except Exception as e:  # this choice alone fails; the batch never saw it
                log.warning("a sequence failed to start: %s: %s", type(e).__name__, e)
                self._fail_choice(job, i, 0, f"{type(e).__name__}: {e}")

    def _report(self, seq: Sequence) -> None:
        job, index = seq.tag
        if getattr(seq, "reported", False):
            return
        text, logprobs = seq.drain()
        prompt_logprobs = seq.drain_prompt_logprobs()
        if text or logprobs or prompt_logprobs:
            job.emit(Delta(text, index, logprobs, prompt_logprobs))
        if seq.finish_reason is not None:
            if seq.error:
                log.warning("a sequence failed: %s", seq.error)
            job.emit(Done(seq.finish_reason, len(job.ids), len(seq.tokens), job.cropped,
                          error=seq.error, index=index, tokens=list(seq.tokens),
                          unshown_logprobs=seq.unshown_logprobs, stop_logprob=seq.stop_logprob))
            seq.reported = True
            self._finished(job, index, seq.finish_reason)

    def _finished(self, job: Job, index: int, reason: str) -> None:
        job.done.add(index)
        complete = len(job.done) == job.n
        with self._lock:
            self._in_system -= 1
            if complete:
                self._open.discard(job)
        if reason == "cancelled":
            job.cancelled.set()
        if complete:
            kind = {"cancelled": "cancelled", "error": "failed"}.get(reason, "completed")
            if job.cancelled.is_set() and kind == "completed":
                kind = "cancelled"
            self.counts[kind] += 1

    def _fail_choice(self, job: Job, index: int, generated: int, error: str) -> None:
        job.emit(Done("error", len(job.ids), generated, job.cropped, error=error, index=index))
        self._finished(job, index, "error")

    def _fail_all(self, error: str) -> None:
        """A batched step failed: every sequence in it fails (the decoder starts afresh)."""
        dec = self._decoder
        for seq in (*dec.active, *dec.waiting):
            job, index = seq.tag
            if getattr(seq, "reported", False):
                continue
            seq.reported = True
            self._fail_choice(job, index, len(seq.tokens), error)
        self._decoder = BatchDecoder(self.model, max_batch=self.max_batch)

    def _die(self, reason: str) -> None:
        """The worker is stopping: refuse new jobs and fail every choice not yet done, wherever
        it is (inbox, waiting, decoding), without relying on the decoder that may have broken."""
        with self._lock:
            self.dead = reason
            jobs = list(self._open)
        error = f"the generation worker stopped: {reason}"
        for job in jobs:
            for i in range(job.n):
                if i not in job.done:
                    self._fail_choice(job, i, 0, error)


def release_name(release_dir: Path) -> str:
    """Model id to report: the release config's repo name, else the folder name."""
    manifest = Path(release_dir) / "run_manifest.json"
    try:
        return json.loads(manifest.read_text())["release_config"]["repo_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return Path(release_dir).resolve().name
