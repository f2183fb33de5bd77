"""The web chat page at `/`, in Debian's chromium driven by Playwright: type a message and
watch the reply stream in, one frame at a time.

Between the browser and `wikigpt serve` sits a relay on 127.0.0.1 that passes the server's
stream on frame by frame and holds each next frame until the page shows the text so far. So
streaming is observed deterministically, whatever the machine's speed: every partial reply
must appear in the chat bubble while the rest of the reply is still held back (a page that
rendered only at the end would time out on the first partial)."""
from __future__ import annotations

import http.server
import json
import queue
import sys
import threading
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from tests.needs import require_tool  # noqa: E402

# Distinct single-byte tokens (a chain may not revisit a token), with é and 🙂 split in bytes.
CHAIN_TEXT = "Aé🙂Bcdfghijklmnopqrstuvwxyz!"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRAME_TIMEOUT_S = 30
LAST_BUBBLE = """expected => {
    const el = document.querySelector('#log .assistant:last-child');
    return el !== null && el.textContent === expected;
}"""

pytestmark = [pytest.mark.browser, pytest.mark.requires_tool("chromium")]


class GatedRelay:
    """Forwards GETs as they are; streams POST /chat one SSE frame at a time: each frame is
    put on `sent`, and the next is only forwarded after the test puts a permit on `release`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent: queue.Queue[str] = queue.Queue()
        self.release: queue.Queue[bool] = queue.Queue()
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                r = httpx.get(relay.upstream + self.path, timeout=30)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {"Content-Type": "application/json"}
                with httpx.stream("POST", relay.upstream + self.path, content=body, headers=headers,
                                  timeout=60) as r:
                    self.send_response(r.status_code)
                    self.send_header("Content-Type", r.headers.get("content-type", "text/event-stream"))
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                    buffer = b""
                    for chunk in r.iter_raw():
                        buffer += chunk
                        while b"\n\n" in buffer:
                            frame, buffer = buffer.split(b"\n\n", 1)
                            self.wfile.write(frame + b"\n\n")
                            self.wfile.flush()
                            relay.sent.put(frame.decode("utf-8"))
                            if not relay.release.get(timeout=FRAME_TIMEOUT_S * 2):
                                return

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.put(False)
        self.server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    tok = support.train_tokenizer(tmp / "tok")
    model = support.chain_model(tok, support.spell(tok, CHAIN_TEXT), block_size=128)
    srv = support.Server(support.build_release(tmp, model, tmp / "tok", "chain")).wait()
    relay = GatedRelay(srv.url)
    yield relay
    relay.stop()
    srv.stop()


def follow_stream(page, relay: GatedRelay) -> list[str]:
    """Release the reply frame by frame; after each delta, wait until the bubble shows the
    reply so far. Returns those texts, in order."""
    shown, reply = [], ""
    while True:
        frame = relay.sent.get(timeout=FRAME_TIMEOUT_S)
        assert frame.startswith("data: "), frame
        data = frame[len("data: "):]
        if data == "[DONE]":
            relay.release.put(True)
            return shown
        delta = json.loads(data)["delta"]
        assert "\ufffd" not in delta  # a character split over tokens arrives whole
        if delta:
            reply += delta
            # The rest of the reply is held in the relay: this text can only be on the page
            # if the page rendered a partial reply.
            page.wait_for_function(LAST_BUBBLE, arg=reply, timeout=FRAME_TIMEOUT_S * 1000)
            shown.append(reply)
        relay.release.put(True)


def test_chat_page_streams_a_reply(server):
    from playwright.sync_api import sync_playwright

    chromium = require_tool("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.click("details summary")  # open the settings panel
            page.fill("#temperature", "0")
            page.fill("#input", "Who was Ada Lovelace?")
            page.press("#input", "Enter")
            shown = follow_stream(page, server)
            page.wait_for_selector("#log .assistant[data-done='true']", timeout=30_000)
            assert page.inner_text("#log .user") == "Who was Ada Lovelace?"
            assert page.inner_text("#log .assistant") == CHAIN_TEXT
            # Every partial reply was on the page before the next frame was sent: it streamed,
            # in several pieces, each a prefix of the reply ending on a whole character.
            assert len(shown) >= 2 and shown[-1] == CHAIN_TEXT
            assert all(CHAIN_TEXT.startswith(s) for s in shown)
            assert len(set(shown)) == len(shown)  # each frame added text
            # A second turn carries the history and streams again.
            page.fill("#input", "And then?")
            page.press("#input", "Enter")
            assert follow_stream(page, server)[-1] == CHAIN_TEXT
            page.wait_for_function("document.querySelectorAll(\"#log .assistant[data-done='true']\").length == 2",
                                   timeout=30_000)
            assert page.locator("#log .assistant").nth(1).inner_text() == CHAIN_TEXT
        finally:
            browser.close()
