"""`wikigpt serve` and `wikigpt chat`.

serve: load a release folder once and serve it with uvicorn (127.0.0.1 by default).
chat:  a terminal client that keeps the multi-turn history and prints deltas as they stream.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from wikigpt_core.serve.limits import Limits

TOKEN_ENV = "WIKIGPT_SERVE_TOKEN"


def default_release() -> Path:
    """$WIKIGPT_HOME/<profile>/hf_release of the current settings."""
    from wikigpt_core.config import artifact_dir, load_settings

    return artifact_dir(load_settings(), "hf_release")


def serve_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wikigpt serve", description="Serve a WikiGPT release over HTTP.")
    p.add_argument("--release", type=Path, default=None,
                   help="release folder (default: $WIKIGPT_HOME/<profile>/hf_release)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer <token>' (default: ${TOKEN_ENV} if set)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="sequences decoded together (continuous batching; default 8)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="sequences that may wait beyond the batch; more get 503 (default 16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="the model names the OpenAI endpoints accept (others get 404); the first is "
                        "the one reported (default: the release's repo name)")
    p.add_argument("--log-level", default="info")
    _limit_arguments(p)
    args = p.parse_args(argv)
    limits = Limits(max_body_bytes=args.max_body_bytes, read_timeout_s=args.read_timeout,
                    max_connections=args.max_connections, max_header_bytes=args.max_header_bytes)

    release = args.release or default_release()
    if not (release / "config.json").exists():
        print(f"error: no release at {release}; materialize the `hf_release` asset or pass "
              "--release PATH", file=sys.stderr)
        return 2
    token = args.token or os.environ.get(TOKEN_ENV) or None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import uvicorn

    from wikigpt_core.serve.app import create_app
    from wikigpt_core.serve.limits import uvicorn_config
    from wikigpt_core.serve.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        logging.getLogger("wikigpt.serve").warning(
            "binding %s without --token: anyone who can reach this port can use the model", args.host)
    names = args.served_model_name or [None]
    engine = Engine.from_release(release, max_queue=args.max_queue, max_batch=args.max_batch,
                                 name=names[0])
    app = create_app(engine, token=token, limits=limits, aliases=tuple(n for n in names[1:] if n))
    print(f"serving {engine.name} from {release} on http://{args.host}:{args.port} "
          f"(auth {'on' if token else 'off'})", flush=True)
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, limits=limits,
                                  log_level=args.log_level.lower())).run()
    engine.close()
    return 0


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    """What one client may cost the server (wikigpt_core/serve/limits.py)."""
    d = Limits()

    def positive(kind):
        def parse(text: str):
            value = kind(text)
            if value <= 0:
                raise argparse.ArgumentTypeError(f"must be positive, not {text}")
            return value
        return parse

    p.add_argument("--max-body-bytes", type=positive(int), default=d.max_body_bytes,
                   help=f"larger request bodies get 413 before they are read (default {d.max_body_bytes:,})")
    p.add_argument("--read-timeout", type=positive(float), default=d.read_timeout_s,
                   help="seconds a request's headers, and then its body, may take to arrive; "
                        f"slower ones get 408 (default {d.read_timeout_s:g})")
    p.add_argument("--max-connections", type=positive(int), default=d.max_connections,
                   help=f"open connections beyond this get 503 at once (default {d.max_connections})")
    p.add_argument("--max-header-bytes", type=positive(int), default=d.max_header_bytes,
                   help=f"larger request headers get 431 (default {d.max_header_bytes:,})")


class ChatSession:
    """Multi-turn history against a running server's POST /chat."""

    def __init__(self, url: str, token: str | None = None, **params: float) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.params = {k: v for k, v in params.items() if v is not None}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(10.0, read=300.0))
        self.messages: list[dict[str, str]] = []

    def send(self, text: str) -> Iterator[str]:
        """Yield reply deltas as they arrive; the turn enters the history only once complete."""
        turn = self.messages + [{"role": "user", "content": text}]
        reply = []
        with self.client.stream("POST", f"{self.url}/chat", json={"messages": turn, **self.params}) as r:
            if r.status_code != 200:
                r.read()
                raise RuntimeError(f"server answered {r.status_code}: {_detail(r.text)}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    raise RuntimeError(f"generation failed: {obj['error']}")
                reply.append(obj["delta"])
                yield obj["delta"]
        self.messages = turn + [{"role": "assistant", "content": "".join(reply)}]

    def reset(self) -> None:
        self.messages = []


def _detail(body: str) -> str:
    try:
        return str(json.loads(body).get("detail", body))
    except (ValueError, AttributeError):
        return body


def chat_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wikigpt chat", description="Chat with a running `wikigpt serve`.")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV} if set)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    args = p.parse_args(argv)
    session = ChatSession(args.url, args.token or os.environ.get(TOKEN_ENV),
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p)
    interactive = sys.stdin.isatty()
    if interactive:
        print("WikiGPT chat. /reset starts over, /quit or Ctrl-D leaves.")
    while True:
        try:
            text = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = text.strip()
        if not text:
            continue
        if text == "/quit":
            return 0
        if text == "/reset":
            session.reset()
            print("(history cleared)")
            continue
        print("wikigpt> ", end="", flush=True)
        try:
            for delta in session.send(text):
                print(delta, end="", flush=True)
        except Exception as e:  # connection refused, 4xx/5xx: say so and keep the prompt alive
            print(f"\n[error] {e}", file=sys.stderr)
            if not interactive:
                return 1
            continue
        print(flush=True)
