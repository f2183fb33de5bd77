"""One request never harms another: sampling values at the edge of float32 sample as they
should, a sequence that fails to start or to decode fails alone, a bad seed is refused by
the schema, and a generation worker that dies says so (/health 503) instead of hanging every
later request, and still stops on SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.generation import BatchDecoder, SamplingParams, Sequence  # noqa: E402
from wikigpt_core.generation.sampling import nucleus_probs, sample_next  # noqa: E402
from wikigpt_core.serve.engine import Delta, Done, Engine, Params  # noqa: E402

USER = [{"role": "user", "content": "Tell me something."}]
OVERFLOW_SEED = 2**64  # 18446744073709551616: does not fit a 64-bit generator seed


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module")
def tok(tok_dir):
    return support.train_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def release(tmp_path_factory, tok, tok_dir):
    tmp = tmp_path_factory.mktemp("isolation")
    return support.build_release(tmp, support.random_model(tok.vocab_size, block_scale=10),
                                 tok_dir, "random")


# -- sampling at the edge of float32 -----------------------------------------------------------

def test_tiny_top_p_keeps_the_most_likely_token():
    logits = torch.tensor([[0.5, 3.0, 1.0, 2.9]])
    probs = nucleus_probs(logits, 1.0, 1e-300)  # 1e-300 is 0 in float32
    assert (probs > 0).tolist() == [[False, True, False, False]]  # multinomial normalizes
    assert sample_next(logits, 1.0, 1e-300).tolist() == [1]


def test_tiny_temperature_is_greedy():
    logits = torch.tensor([[0.5, 3.0, 1.0, 2.9], [4.0, 0.0, 0.0, 3.999]])
    for temperature in (1e-300, 1e-6):
        assert sample_next(logits, temperature, 0.9).tolist() == [1, 0]


# -- one sequence fails alone --------------------------------------------------------------------

class FaultySequence(Sequence):
    """Fails while decoding its third token, as a bug in one sequence's own path would."""

    def _accept(self, token, *args):
        if len(self.tokens) == 2:
            raise RuntimeError("injected decoding fault")
        super()._accept(token, *args)


def _solo(model, tok, prompt, params):
    return BatchDecoder(model, max_batch=1).run([Sequence(prompt, params, tok)])[0].tokens


def test_a_failing_sequence_leaves_its_batch(tok):
    model = support.random_model(tok.vocab_size, block_scale=10).eval()
    prompts = [tok.encode(f"Topic {i} is") for i in range(3)]
    params = [SamplingParams(12, 0.8, 0.9, seed=i) for i in range(3)]
    dec = BatchDecoder(model, max_batch=4)
    good = [dec.add(Sequence(p, prm, tok)) for p, prm in zip(prompts, params)]
    bad = dec.add(FaultySequence(tok.encode("Broken"), SamplingParams(12, 0.8, 0.9, seed=7), tok))
    with pytest.raises(ValueError, match=r"seed .* out of range; use 0 <= seed < 2\*\*63"):
        dec.add(Sequence(prompts[0], SamplingParams(seed=OVERFLOW_SEED), tok))
    while dec.busy:
        dec.step()
    assert bad.finish_reason == "error" and "injected decoding fault" in bad.error
    assert len(bad.tokens) == 2
    for seq, p, prm in zip(good, prompts, params):
        assert seq.finish_reason in ("stop", "length") and seq.error is None
        assert seq.tokens == _solo(model, tok, p, prm)  # its company did not change it


def test_a_batch_job_still_fails_loudly(tok):
    model = support.random_model(tok.vocab_size).eval()
    seqs = [FaultySequence(tok.encode("x"), SamplingParams(5, 0.0), tok)]
    with pytest.raises(RuntimeError, match="generation failed: decoding failed: RuntimeError: injected"):
        BatchDecoder(model).run(seqs)


def test_engine_fails_a_choice_that_cannot_start_and_serves_the_rest(tok):
    chain = tok.encode("Aé🙂B")
    engine = Engine(support.chain_model(tok, chain), tok, max_queue=4, max_batch=4)

    async def reply(params):
        job = engine.submit(USER, params)
        text = ""
        while not isinstance(item := await job.events.get(), Done):
            assert isinstance(item, Delta)
            text += item.text
        return text, item

    async def together():  # submitted in one tick: they start in the same batch
        return await asyncio.gather(*(reply(Params(20, 0.0, 1.0, seed=s))
                                      for s in (1, OVERFLOW_SEED, 2, 3)))
    try:
        results = asyncio.run(together())
        bad_text, bad = results[1]
        assert bad.finish_reason == "error" and "seed" in bad.error and bad_text == ""
        assert [(t, d.finish_reason) for t, d in results[:1] + results[2:]] == [("Aé🙂B", "stop")] * 3
        assert asyncio.run(reply(Params(20, 0.0, 1.0)))[0] == "Aé🙂B"  # and afterwards
        assert engine.stats()["failed"] == 1 and engine.stats()["worker"] == "alive"
    finally:
        engine.close()


# -- over HTTP: the bad request beside three good ones -----------------------------------------

@pytest.fixture(scope="module")
def server(release):
    s = support.Server(release).wait()
    yield s
    s.stop()


def _complete(url: str, **params) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120,
                      json={"messages": USER, "max_tokens": 16, **params})


def _text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


GOOD = [{"temperature": 0.9, "seed": s} for s in (11, 12, 13)]


@pytest.mark.parametrize("bad, answer", [
    ({"seed": OVERFLOW_SEED}, 400),
    ({"seed": -1}, 400),
    ({"top_p": 1e-300, "temperature": 0.9}, "greedy"),
    ({"temperature": 1e-300}, "greedy"),
])
def test_a_bad_request_beside_three_good_ones_harms_none(server, bad, answer):
    alone = [_text(_complete(server.url, **g)) for g in GOOD]
    greedy = _text(_complete(server.url, temperature=0))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_complete, server.url, **p) for p in (GOOD[0], bad, *GOOD[1:])]
        responses = [f.result() for f in futures]
    bad_response = responses.pop(1)
    if answer == 400:
        assert bad_response.status_code == 400 and "seed" in bad_response.json()["error"]["message"]
    else:  # the standard semantics: top-p keeps the top token, a vanishing temperature is argmax
        assert _text(bad_response) == greedy
    assert [_text(r) for r in responses] == alone  # seeded: the same as when sent alone
    assert _text(_complete(server.url, **GOOD[0])) == alone[0]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["queue"]["worker"] == "alive"
    assert health["queue"]["failed"] == 0


# -- a dead worker is reported, refuses work, and the process still stops ----------------------

FRAGILE_SERVER = """
import sys
from pathlib import Path

import uvicorn

from wikigpt_core.serve.app import create_app
from wikigpt_core.serve.engine import Engine
from wikigpt_core.serve.limits import Limits, uvicorn_config


class Fragile(Engine):
    def _report(self, seq):  # a bug in the worker's own loop, past every per-sequence guard
        raise RuntimeError("injected worker fault")


engine = Fragile.from_release(Path(sys.argv[1]))
config = uvicorn_config(create_app(engine), host="127.0.0.1", port=int(sys.argv[2]),
                        limits=Limits(), log_level="warning")
uvicorn.Server(config).run()
"""


def test_a_dead_worker_is_reported_and_sigterm_still_stops_the_server(release):
    port = support.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", FRAGILE_SERVER, str(release), str(port)],
                            cwd=support.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _wait_healthy(proc, url)
        first = _complete(url, temperature=0)  # kills the worker; must not hang
        assert first.status_code == 500
        assert "generation worker stopped" in first.json()["error"]["message"]
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "dead"
        assert "injected worker fault" in health.json()["reason"]
        later = _complete(url, temperature=0)
        assert later.status_code == 503 and "restart the server" in later.json()["error"]["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate()[0]
    assert "injected worker fault" in log  # the traceback is logged, not swallowed


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not become healthy in time")
