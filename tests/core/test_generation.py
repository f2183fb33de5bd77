"""The generation module: continuous batching equals sequential decoding, per-sequence seeds,
stop tokens and strings, log-probabilities, and the one cropping rule."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from tests.core.train_support import greedy_recompute  # noqa: E402
from wikigpt_core.chat import ChatFormatError, render_prompt  # noqa: E402
from wikigpt_core.generation import (STOP_IDS, BatchDecoder, SamplingParams, Sequence, StopText,  # noqa: E402
                                     TokenLogprob,
                                     crop_conversation, generate_chat, prompt_budget, stop_ids)
from wikigpt_core.generation.packed import PackedLinear, decode_view, packing_available  # noqa: E402
from wikigpt_core.model import GPT, GPTConfig  # noqa: E402


def lively_model(seed: int = 0, block: int = 64) -> GPT:
    """Random tiny GPT with enlarged block weights, so greedy text varies with the prompt."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=256, block_size=block, n_layer=2, n_head=4, n_embd=32,
                          mlp_multiple_of=32)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks."):
                p.mul_(10)
    return model


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 25, (n,), generator=g).tolist()
    return [torch.randint(4, 256, (k,), generator=g).tolist() for k in lengths]


def test_ragged_step_equals_single_sequence_logits():
    model = lively_model()
    a, b = prompts(2)
    dec = BatchDecoder(model, max_batch=2)
    with torch.no_grad():
        cache = model.new_ragged_cache(2)
        for slot, p in enumerate((a, b)):
            view = cache.row_cache(slot)
            model(torch.tensor([p]), cache=view)
            cache.lengths[slot] = view.pos
        cache.rows = 2
        step, _ = model(torch.tensor([[7], [9]]), cache=cache)
        alone_a, _ = model(torch.tensor([a + [7]]))
        alone_b, _ = model(torch.tensor([b + [9]]))
    torch.testing.assert_close(step[:, -1], torch.cat([alone_a[:, -1], alone_b[:, -1]]), atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [len(a) + 1, len(b) + 1] and dec.max_batch == 2


def test_eight_concurrent_greedy_streams_equal_sequential():
    model = lively_model()
    ps = prompts(8)
    params = [SamplingParams(8 + 4 * k, 0.0, 1.0) for k in range(8)]  # rows leave at different steps
    sequential = [BatchDecoder(model, max_batch=1).run([Sequence(p, q)])[0] for p, q in zip(ps, params)]
    dec = BatchDecoder(model, max_batch=8)
    batched = [dec.add(Sequence(p, q)) for p, q in zip(ps[:5], params[:5])]
    for _ in range(3):  # three more join while the first five are mid-decode
        dec.step()
    assert len(dec.active) == 5
    batched += [dec.add(Sequence(p, q)) for p, q in zip(ps[5:], params[5:])]
    sizes = []
    while dec.busy:
        dec.step()
        sizes.append(len(dec.active))
    assert max(sizes) == 8 and min(sizes) < 8  # really batched, and rows really left
    assert [s.tokens for s in batched] == [s.tokens for s in sequential]
    assert [s.finish_reason for s in batched] == [s.finish_reason for s in sequential]
    assert len({tuple(s.tokens) for s in sequential}) == 8
    # And the batched decode agrees with greedy decoding by full recomputation (no cache).
    for p, q, s in zip(ps, params, sequential):
        assert s.tokens == greedy_recompute(model, p, q.max_new_tokens)


def test_prepacked_view_shares_the_model_and_computes_the_same_logits():
    model = lively_model()
    view = decode_view(model)
    if not packing_available():
        assert view is model  # nothing to pack with: the decoder runs the model itself
        return
    packed = [m for m in view.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2 * 5 + 1
    assert {id(p) for p in view.parameters()} <= {id(p) for p in model.parameters()}  # nothing copied but the packs
    ids = torch.tensor([prompts(1)[0]])
    with torch.no_grad():
        torch.testing.assert_close(view(ids, all_logits=True)[0], model(ids, all_logits=True)[0],
                                   atol=1e-4, rtol=1e-5)
    # Prepacked and plain-weight decoders pick the same tokens and report the same logprobs.
    ps, q = prompts(6, seed=5), SamplingParams(10, 0.0, 1.0, logprobs=True)
    a = BatchDecoder(model, max_batch=6).run([Sequence(p, q) for p in ps])
    b = BatchDecoder(model, max_batch=6, prepack=False).run([Sequence(p, q) for p in ps])
    assert [s.tokens for s in a] == [s.tokens for s in b]
    for x, y in zip(a, b):
        assert [lp.logprob for lp in x.logprobs] == pytest.approx([lp.logprob for lp in y.logprobs], abs=1e-4)


def test_decoder_follows_weights_loaded_after_it_was_built():
    model, other = lively_model(0), lively_model(1)
    p, q = prompts(1)[0], SamplingParams(12, 0.0, 1.0)
    dec = BatchDecoder(model, max_batch=2)
    before = dec.run([Sequence(p, q)])[0].tokens
    model.load_state_dict(other.state_dict())  # in place, as a reload into a running server would
    after = dec.run([Sequence(p, q)])[0].tokens
    assert after == BatchDecoder(other, max_batch=2).run([Sequence(p, q)])[0].tokens
    assert after != before


def test_more_sequences_than_rows_wait_their_turn():
    model = lively_model()
    ps = prompts(5, seed=3)
    params = [SamplingParams(6, 0.0, 1.0)] * 5
    alone = [BatchDecoder(model, max_batch=1).run([Sequence(p, q)])[0].tokens for p, q in zip(ps, params)]
    dec = BatchDecoder(model, max_batch=2)
    seqs = [dec.add(Sequence(p, q)) for p, q in zip(ps, params)]
    dec.step()
    assert len(dec.active) == 2 and len(dec.waiting) == 3
    while dec.busy:
        dec.step()
    assert [s.tokens for s in seqs] == alone


def test_seeded_sampling_does_not_depend_on_the_batch():
    model = lively_model()
    p = prompts(1)[0]
    q = SamplingParams(20, 1.0, 0.9, seed=1234)
    alone = BatchDecoder(model, max_batch=1).run([Sequence(p, q)])[0].tokens
    others = [Sequence(x, SamplingParams(20, 1.0, 0.9, seed=k)) for k, x in enumerate(prompts(5, seed=9))]
    together = BatchDecoder(model, max_batch=6).run([*others[:3], Sequence(p, q), *others[3:]])
    assert together[3].tokens == alone
    other = BatchDecoder(model, max_batch=1).run([Sequence(p, SamplingParams(20, 1.0, 0.9, seed=99))])[0]
    assert other.tokens != alone


def test_stop_token_ends_and_context_full_is_length():
    model = lively_model(block=32)
    p = prompts(1)[0][:20]
    s = BatchDecoder(model).run([Sequence(p, SamplingParams(100, 0.0, 1.0))])[0]
    if s.finish_reason == "stop":
        assert s.tokens[-1] in stop_ids()
    else:
        assert s.finish_reason == "length" and len(p) + len(s.tokens) == 32
    with pytest.raises(ValueError, match="context"):
        BatchDecoder(model).add(Sequence(list(range(4, 36)), SamplingParams(1)))


def test_logprobs_match_a_full_forward():
    model = lively_model()
    p = prompts(1)[0]
    s = BatchDecoder(model).run([Sequence(p, SamplingParams(5, 0.0, 1.0, logprobs=True, top_logprobs=3,
                                                            prompt_logprobs=True))])[0]
    ids = torch.tensor([p + s.tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, all_logits=True)[0][0].float(), -1)
    assert s.prompt_logprobs[0] is None and len(s.prompt_logprobs) == len(p)
    for t in range(1, len(p)):
        assert s.prompt_logprobs[t].logprob == pytest.approx(logp[t - 1, p[t]].item(), abs=1e-4)
    assert len(s.logprobs) == len(s.tokens)
    for k, lp in enumerate(s.logprobs):
        row = logp[len(p) - 1 + k]
        assert lp.token_id == s.tokens[k] and lp.logprob == pytest.approx(row[lp.token_id].item(), abs=1e-4)
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id  # greedy picks the top token
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)


class CharTok:
    """Stand-in with the one method StopText's decoder needs: ids are code points."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


@pytest.mark.parametrize("stop,expected", [(("END",), "abc "), (("c E", "xyz"), "ab"), (("zzz",), "abc ENDde")])
def test_stop_strings_are_never_streamed(stop, expected):
    text = StopText(CharTok(), stop)
    deltas = []
    for ch in "abc ENDde":
        delta, stopped = text.push(ord(ch))
        deltas.append(delta)
        if stopped:
            break
    deltas.append(text.finish())
    # Deltas only ever add text, so a stream that ends before the stop never showed any of it.
    assert "".join(deltas) == expected and text.text == expected


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    text = StopText(CharTok(), ("ENDX",))
    out = [text.push(ord(c))[0] for c in "aEND"]
    assert "".join(out) == "a"  # "END" may still become "ENDX"
    assert text.push(ord("y")) == ("ENDy", False)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return support.train_tokenizer(tmp_path_factory.mktemp("tok"))


def test_crop_keeps_short_prompts_whole(tok):
    msgs = [{"role": "user", "content": "Hello"}]
    ids, cropped = crop_conversation(msgs, tok, budget=100)
    assert ids == render_prompt(msgs, tok) and cropped == 0


def test_crop_drops_oldest_exchanges_first(tok):
    long = "The history of the encyclopedia began in 2001. " * 3
    msgs = []
    for i in range(5):
        msgs += [{"role": "user", "content": f"{i} {long}"}, {"role": "assistant", "content": long}]
    msgs.append({"role": "user", "content": "Last question?"})
    budget = len(render_prompt(msgs[-3:], tok)) + 1
    ids, cropped = crop_conversation(msgs, tok, budget)
    assert ids == render_prompt(msgs[-3:], tok)  # whole turns, still starting with <|user|>
    assert cropped == len(render_prompt(msgs, tok)) - len(ids)


def test_crop_cuts_a_single_huge_turn_keeping_its_user_marker(tok):
    msgs = [{"role": "user", "content": "word " * 500 + "the end?"}]
    ids, cropped = crop_conversation(msgs, tok, budget=32)
    full = render_prompt(msgs, tok)
    assert ids == full[:1] + full[-31:] and ids[0] == tok.user_id and ids[-1] == tok.assistant_id
    assert cropped == len(full) - 32


SYSTEM = {"role": "system", "content": "You answer in one short sentence."}


def test_crop_keeps_the_system_text_in_the_first_kept_turn(tok):
    long = "The history of the encyclopedia began in 2001. " * 3
    msgs = [SYSTEM]
    for i in range(5):
        msgs += [{"role": "user", "content": f"{i} {long}"}, {"role": "assistant", "content": long}]
    msgs.append({"role": "user", "content": "Last question?"})
    kept = [SYSTEM, *msgs[-3:]]  # the system text folds into the first turn that remains
    ids, cropped = crop_conversation(msgs, tok, len(render_prompt(kept, tok)) + 1)
    assert ids == render_prompt(kept, tok)
    assert cropped == len(render_prompt(msgs, tok)) - len(ids)


def test_crop_cuts_the_question_not_the_system_text(tok):
    msgs = [SYSTEM, {"role": "user", "content": "word " * 500 + "the end?"}]
    ids, _ = crop_conversation(msgs, tok, budget=32)
    system = tok.encode(SYSTEM["content"])
    assert len(ids) == 32 and ids[1:1 + len(system)] == system and ids[-1] == tok.assistant_id
    with pytest.raises(ChatFormatError, match="system message"):
        crop_conversation([{**SYSTEM, "content": "Be brief. " * 50}, msgs[1]], tok, budget=32)


def test_stop_string_and_stop_token_logprobs_stay_out_of_the_drained_ones(tok):
    """What `drain()` hands out is what the text shows: not the stop string's tokens, not the
    final stop token (kept apart in `stop_logprob`), not a trailing partial character."""
    text = "Paris is the capital"
    seq = Sequence([tok.user_id], SamplingParams(stop=(" the",), logprobs=True), tok)
    for t in tok.encode(text):
        seq._accept(t, TokenLogprob(t, -1.0, []), STOP_IDS, block=1000)
        if seq.finish_reason:
            break
    shown, logprobs = seq.drain()
    assert shown == "Paris is" and tok.decode([lp.token_id for lp in logprobs]) == "Paris is"
    ended = Sequence([tok.user_id], SamplingParams(logprobs=True), tok)
    for t in [*tok.encode("Aé")[:-1], tok.end_id]:  # é cut in half, then <|end|>
        ended._accept(t, TokenLogprob(t, -1.0, []), STOP_IDS, block=1000)
    shown, logprobs = ended.drain()
    assert shown == "A" and [lp.token_id for lp in logprobs] == tok.encode("A")
    assert ended.stop_logprob.token_id == tok.end_id and len(ended.unshown_logprobs) == 1


def test_prompt_budget_leaves_room_but_keeps_a_quarter():
    assert prompt_budget(1024, 256) == 768
    assert prompt_budget(1024, 1000) == 256


def test_generate_chat_folds_system_and_stops_on_end(tok):
    chain = tok.encode("AB")
    model = support.chain_model(tok, chain)
    convs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
             [{"role": "user", "content": "Be brief.\n\nhi"}]]
    a, b = generate_chat(model, tok, convs, [SamplingParams(10, 0.0, 1.0)] * 2)
    assert a.prompt == b.prompt == render_prompt(convs[1], tok)
    assert a.text == b.text == "AB" and a.finish_reason == "stop" and a.tokens[-1] == tok.end_id
