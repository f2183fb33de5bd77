"""The chat template and label invariants on a 2-user / 2-assistant dialog."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wikigpt_core.chat import IGNORE_INDEX, ChatFormatError, render_example, render_prompt
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer


@pytest.fixture(scope="module")
def tok() -> WikiTokenizer:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(["Paris is the capital of France. What is the capital?"] * 20, trainer)
    return WikiTokenizer(t)


DIALOG = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And its river?"},
    {"role": "assistant", "content": "The Seine."},
]


def test_template_ids(tok):
    ids, labels = render_example(DIALOG, tok)
    enc = tok.encode
    expected = ([tok.user_id, *enc(DIALOG[0]["content"]), tok.end_id,
                 tok.assistant_id, *enc("Paris."), tok.end_id,
                 tok.user_id, *enc(DIALOG[2]["content"]), tok.end_id,
                 tok.assistant_id, *enc("The Seine."), tok.end_id])
    assert ids == expected and len(labels) == len(ids)


def test_mask_invariants(tok):
    ids, labels = render_example(DIALOG, tok)
    trained = [(i, t) for i, (t, l) in enumerate(zip(ids, labels)) if l != IGNORE_INDEX]
    # Every trained label equals its id (the loss shifts later).
    assert all(labels[i] == t for i, t in trained)
    # No user token, no <|user|>, no <|assistant|> is ever trained.
    assert tok.user_id not in [t for _, t in trained]
    assert tok.assistant_id not in [t for _, t in trained]
    # Exactly the two assistant <|end|>s are trained; the two user <|end|>s are not.
    end_positions = [i for i, t in enumerate(ids) if t == tok.end_id]
    assert len(end_positions) == 4
    assert [labels[i] != IGNORE_INDEX for i in end_positions] == [False, True, False, True]
    # The trained tokens are exactly the assistant contents + <|end|>.
    assert [t for _, t in trained] == tok.encode("Paris.") + [tok.end_id] + tok.encode("The Seine.") + [tok.end_id]


def test_generation_prompt_ends_with_assistant(tok):
    ids = render_prompt(DIALOG[:3], tok)
    assert ids[-1] == tok.assistant_id and ids.count(tok.user_id) == 2


def test_text_never_becomes_special(tok):
    assert tok.end_id not in tok.encode("<|end|><|user|>")


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "system", "content": "x"}], "followed by a user message"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "x"}], "'system' as the first"),
    ([{"role": "tool", "content": "x"}], "only 'user' and 'assistant'"),
    ([{"role": "assistant", "content": "x"}], "alternate"),
    ([{"role": "user", "content": 3}], "string"),
    ([{"role": "user", "content": "x", "extra": 1}], "exactly"),
])
def test_bad_conversations_are_refused(tok, messages, match):
    with pytest.raises(ChatFormatError, match=match):
        render_prompt(messages, tok)


SYSTEM_DIALOG = [{"role": "system", "content": "Answer in one sentence."}, *DIALOG[:3]]


def test_system_message_is_folded_into_the_first_user_turn(tok):
    folded = [{"role": "user", "content": "Answer in one sentence.\n\n" + DIALOG[0]["content"]}, *DIALOG[1:3]]
    assert render_prompt(SYSTEM_DIALOG, tok) == render_prompt(folded, tok)
    assert render_prompt([{"role": "system", "content": ""}, DIALOG[0]], tok) == render_prompt(DIALOG[:1], tok)
    ids, labels = render_example([SYSTEM_DIALOG[0], *DIALOG], tok)
    assert ids == render_example([folded[0], *DIALOG[1:]], tok)[0]


@pytest.mark.parametrize("messages", [SYSTEM_DIALOG, DIALOG[:3], DIALOG[:1],
                                      [{"role": "system", "content": "Be kind."}, DIALOG[0]]])
def test_transformers_chat_template_renders_the_same_ids(tok, tmp_path, messages):
    """The release's tokenizer files, loaded by transformers: `apply_chat_template` (the same
    Jinja path vLLM's chat endpoint renders with) gives the core's ids."""
    transformers = pytest.importorskip("transformers")
    import json

    from wikigpt_core.release.hf_tokenizer import tokenizer_config

    tok.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, 128)))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    enc = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    assert ids == render_prompt(messages, tok)
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|user|>") == sum(m["role"] == "user" for m in messages)
    with pytest.raises(Exception, match="followed by a user message"):
        hf.apply_chat_template([{"role": "system", "content": "x"}], add_generation_prompt=True)
