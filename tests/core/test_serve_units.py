"""In-process pieces of serving: UTF-8-safe incremental decoding, left-cropping of long
histories, and the engine's isolation of concurrent requests."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.chat import ChatFormatError, render_prompt  # noqa: E402
from wikigpt_core.serve.engine import Done, Engine, Params, QueueFull, crop_prompt  # noqa: E402
from wikigpt_core.serve.streaming import IncrementalDecoder  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return support.train_tokenizer(tmp_path_factory.mktemp("tok"))


def test_decoder_holds_back_partial_characters(tok):
    text = "naïve 🙂 東京!"
    ids = tok.encode(text)
    assert len(ids) > len(text) - 3  # the multi-byte characters really are split into bytes
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(i) for i in ids] + [dec.finish()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert "🙂" in deltas and "東" in deltas  # each arrived whole, in one delta


def test_decoder_skips_specials_and_never_sends_a_partial_tail(tok):
    dec = IncrementalDecoder(tok)
    assert dec.push(tok.user_id) == ""
    lead_byte = tok.encode("é")[0]  # first byte of a 2-byte character, never completed
    assert dec.push(tok.encode("A")[0]) == "A"
    assert dec.push(lead_byte) == ""
    assert dec.finish() == ""  # generation ended mid-character: nothing half-made is sent
    dec = IncrementalDecoder(tok)
    stray = tok.encode("é")[1]  # a lone continuation byte is invalid UTF-8 wherever it is
    assert dec.push(stray) == "" and dec.push(tok.encode("B")[0]) == "\ufffdB"


def test_crop_keeps_short_prompts_whole(tok):
    msgs = [{"role": "user", "content": "Hello"}]
    ids, cropped = crop_prompt(msgs, tok, budget=100)
    assert ids == render_prompt(msgs, tok) and cropped == 0


def test_crop_drops_oldest_exchanges_first(tok):
    long = "The history of the encyclopedia began in 2001. " * 3
    msgs = []
    for i in range(5):
        msgs += [{"role": "user", "content": f"{i} {long}"}, {"role": "assistant", "content": long}]
    msgs.append({"role": "user", "content": "Last question?"})
    budget = len(render_prompt(msgs[-3:], tok)) + 1
    ids, cropped = crop_prompt(msgs, tok, budget)
    assert ids == render_prompt(msgs[-3:], tok)  # whole turns, still starting with <|user|>
    assert cropped == len(render_prompt(msgs, tok)) - len(ids)


def test_crop_cuts_a_single_huge_turn_from_the_left(tok):
    msgs = [{"role": "user", "content": "word " * 500 + "the end?"}]
    ids, cropped = crop_prompt(msgs, tok, budget=32)
    full = render_prompt(msgs, tok)
    assert ids == full[-32:] and ids[-1] == tok.assistant_id and cropped == len(full) - 32


def _collect(engine: Engine, messages, params: Params) -> tuple[str, Done]:
    async def run():
        job = engine.submit(messages, params)
        parts = []
        while True:
            item = await job.events.get()
            if isinstance(item, Done):
                return "".join(parts), item
            parts.append(item)
    return asyncio.run(run())


def test_engine_stops_at_end_and_reports_usage(tok):
    chain = tok.encode("Aé🙂B")
    engine = Engine(support.chain_model(tok, chain), tok, max_queue=2)
    try:
        text, done = _collect(engine, [{"role": "user", "content": "hi"}], Params(20, 0.0, 1.0))
        assert text == "Aé🙂B" and done.finish_reason == "stop"
        assert done.completion_tokens == len(chain) + 1 and done.cropped_tokens == 0
        text, done = _collect(engine, [{"role": "user", "content": "hi"}], Params(2, 0.0, 1.0))
        # 2 tokens are "A" and half of "é": the half character is never sent.
        assert text == "A" and done.finish_reason == "length" and done.completion_tokens == 2
        with pytest.raises(ChatFormatError):
            asyncio.run(_submit(engine, [{"role": "assistant", "content": "x"}]))
    finally:
        engine.close()


async def _submit(engine: Engine, messages):
    return engine.submit(messages, Params())


def test_engine_queue_is_bounded(tok):
    engine = Engine(support.chain_model(tok, tok.encode("AB")), tok, max_queue=1)
    engine.close()  # the worker exits, so queued jobs stay queued
    engine._worker.join(timeout=10)

    async def fill():
        engine.submit([{"role": "user", "content": "a"}], Params())
        with pytest.raises(QueueFull, match="1 requests"):
            engine.submit([{"role": "user", "content": "b"}], Params())
    asyncio.run(fill())
