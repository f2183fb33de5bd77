"""In-process pieces of serving: UTF-8-safe incremental decoding and the engine's events,
choices and bounded queue (cropping is tested with the generation module)."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.chat import ChatFormatError  # noqa: E402
from wikigpt_core.serve.engine import Delta, Done, Engine, Params, QueueFull  # noqa: E402
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


def _collect(engine: Engine, messages, params) -> tuple[str, Done]:
    async def run():
        job = engine.submit(messages, params)
        parts = []
        while True:
            item = await job.events.get()
            if isinstance(item, Done):
                return "".join(parts), item
            assert isinstance(item, Delta) and item.index == 0
            parts.append(item.text)
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
    engine = Engine(support.chain_model(tok, tok.encode("AB")), tok, max_queue=1, max_batch=1)
    engine.close()  # the worker exits, so queued jobs stay queued
    engine._worker.join(timeout=10)

    async def fill():
        engine.submit([{"role": "user", "content": "a"}], Params())  # its row in the batch
        engine.submit([{"role": "user", "content": "b"}], Params())  # waits
        with pytest.raises(QueueFull, match=r"batch \(1 sequences\) and the queue \(1 more\)"):
            engine.submit([{"role": "user", "content": "c"}], Params())
        engine._in_system = 0  # emptied again: now n counts, each choice takes a place
        with pytest.raises(QueueFull):
            engine.submit([{"role": "user", "content": "d"}], Params(), 3)
        engine.submit([{"role": "user", "content": "e"}], Params(), 2)
    asyncio.run(fill())


def test_engine_n_choices_and_stop_strings(tok):
    chain = tok.encode("Aé🙂B")
    engine = Engine(support.chain_model(tok, chain), tok, max_queue=4, max_batch=4)

    async def run(params, n):
        job = engine.submit([{"role": "user", "content": "hi"}], params, n)
        texts, dones = [""] * n, {}
        while len(dones) < n:
            item = await job.events.get()
            if isinstance(item, Done):
                dones[item.index] = item
            else:
                texts[item.index] += item.text
        return texts, dones
    try:
        texts, dones = asyncio.run(run(Params(20, 0.0, 1.0), 3))
        assert texts == ["Aé🙂B"] * 3 and {d.finish_reason for d in dones.values()} == {"stop"}
        texts, dones = asyncio.run(run(Params(20, 0.0, 1.0, stop=("🙂",)), 1))
        assert texts == ["Aé"] and dones[0].finish_reason == "stop"
        assert dones[0].tokens[-1] != tok.end_id  # it stopped on the string, before <|end|>
    finally:
        engine.close()
