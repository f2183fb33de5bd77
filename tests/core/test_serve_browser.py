"""The web chat page at `/`, in Debian's chromium driven by Playwright: type a message and
watch the reply stream in (several DOM updates, then the full text)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# Distinct single-byte tokens (a chain may not revisit a token), with é and 🙂 split in bytes.
CHAIN_TEXT = "Aé🙂Bcdfghijklmnopqrstuvwxyz!"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium: apt-get install -y chromium"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    tok = support.train_tokenizer(tmp / "tok")
    # Six (identity) blocks at width 1,024 make each token take a few ms, so the reply
    # visibly arrives in pieces.
    model = support.chain_model(tok, support.spell(tok, CHAIN_TEXT), width=1024, n_layer=6,
                                block_size=128)
    srv = support.Server(support.build_release(tmp, model, tmp / "tok", "chain")).wait()
    yield srv
    srv.stop()


def test_chat_page_streams_a_reply(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            # Record every text the assistant bubble shows, to see the reply arrive in pieces.
            page.evaluate("""() => {
                window.seen = [];
                new MutationObserver(() => {
                    const last = document.querySelector('#log .assistant:last-child');
                    if (last) window.seen.push(last.textContent);
                }).observe(document.getElementById('log'),
                           {subtree: true, childList: true, characterData: true});
            }""")
            page.click("details summary")  # open the settings panel
            page.fill("#temperature", "0")
            page.fill("#input", "Who was Ada Lovelace?")
            page.press("#input", "Enter")
            page.wait_for_selector("#log .assistant[data-done='true']", timeout=30_000)
            assert page.inner_text("#log .user") == "Who was Ada Lovelace?"
            assert page.inner_text("#log .assistant") == CHAIN_TEXT
            seen = [s for s in page.evaluate("window.seen") if s]
            # Partial texts were rendered before the whole reply: it streamed. Every one of them
            # is a prefix of the reply that ends on a whole character.
            partial = {s for s in seen if s != CHAIN_TEXT}
            assert len(partial) >= 2 and seen[-1] == CHAIN_TEXT
            assert all(CHAIN_TEXT.startswith(s) and "\ufffd" not in s for s in partial)
            # A second turn carries the history and streams again.
            page.fill("#input", "And then?")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll(\"#log .assistant[data-done='true']\").length == 2",
                                   timeout=30_000)
            assert page.locator("#log .assistant").nth(1).inner_text() == CHAIN_TEXT
        finally:
            browser.close()
