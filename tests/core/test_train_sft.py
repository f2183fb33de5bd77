"""SFT (docs/reference.md, "Chat format").

Label masks on a 2-user/2-assistant dialog, greedy packing, document masking
(packed loss == token-weighted loss of the examples alone) and the run_sft stage."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.core.train_support import make_sft_dataset, make_tokenizer, micro_model, micro_train, single_thread  # noqa: F401 (fixture)
from wikigpt_core.chat import IGNORE_INDEX, render_example
from wikigpt_core.model import GPT
from wikigpt_core.model_io import load_model, save_model
from wikigpt_core.sft import run_sft
from wikigpt_core.train.config import derive_max_steps
from wikigpt_core.train.data import example_arrays, pack_examples

DIALOG = [{"role": "user", "content": "Where is the river?"},
          {"role": "assistant", "content": "North of the city."},
          {"role": "user", "content": "And the bridge?"},
          {"role": "assistant", "content": "Near the museum."}]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_mask_invariants_two_turns(tok):
    ids, labels = render_example(DIALOG, tok)
    u1, a1, u2, a2 = (tok.encode(m["content"]) for m in DIALOG)
    U, A, E = tok.user_id, tok.assistant_id, tok.end_id
    assert ids == [U, *u1, E, A, *a1, E, U, *u2, E, A, *a2, E]
    ign = IGNORE_INDEX
    assert labels == ([ign] * (len(u1) + 2) + [ign, *a1, E] + [ign] * (len(u2) + 2) + [ign, *a2, E])
    # every user-turn token (its <|user|> and <|end|> too) and every <|assistant|> is ignored
    for i, t in enumerate(ids):
        if t in (U, A):
            assert labels[i] == ign
    trained = [l for l in labels if l != ign]
    assert trained == [*a1, E, *a2, E]  # assistant content + its closing <|end|>
    # after the shift, the <|assistant|> position predicts the first answer token
    x, y = example_arrays(ids, labels)
    a_pos = ids.index(A)
    assert y[a_pos] == a1[0] and y[-1] == ign and len(x) == len(y) == len(ids)
    assert [t for t in y if t != ign] == trained  # nothing lost, nothing added by the shift


def test_greedy_packing_drops_long_and_pads_with_end(tok):
    ex = [([5] * 6, [IGNORE_INDEX] * 3 + [5] * 3), ([6] * 5, [IGNORE_INDEX] + [6] * 4),
          ([7] * 20, [7] * 20), ([8] * 4, [IGNORE_INDEX] * 2 + [8] * 2)]
    blocks, stats = pack_examples(ex, block_size=12, pad_id=tok.end_id, end_id=tok.end_id)
    assert stats.examples == 3 and stats.dropped_too_long == 1 and stats.blocks == 2
    assert blocks["idx"][0].tolist() == [5] * 6 + [6] * 5 + [tok.end_id]  # 6 + 5 fit, 1 pad
    assert blocks["doc_ids"][0].tolist() == [0] * 6 + [1] * 5 + [-1]
    assert blocks["idx"][1].tolist() == [8] * 4 + [tok.end_id] * 8
    assert blocks["targets"][1, 4:].tolist() == [IGNORE_INDEX] * 8  # padding never trained
    assert stats.positions == 24 and stats.loss_positions == 3 + 4 + 2  # after the shift
    assert stats.loss_fraction == pytest.approx(9 / 24)


def test_packed_loss_equals_token_weighted_loss_of_examples_alone(tok):
    torch.manual_seed(0)
    model = GPT(micro_model(vocab_size=tok.vocab_size, block_size=128)).eval()
    dialogs = [DIALOG[:2], DIALOG, [{"role": "user", "content": "Name a painter."},
                                    {"role": "assistant", "content": "The famous painter."}]]
    examples = [render_example(d, tok) for d in dialogs]
    blocks, stats = pack_examples(examples, 128, tok.end_id, tok.end_id)
    assert stats.blocks == 1
    with torch.no_grad():
        _, packed = model(blocks["idx"], blocks["targets"], doc_ids=blocks["doc_ids"])
        total, count = 0.0, 0
        for ids, labels in examples:
            x, y = example_arrays(ids, labels)
            _, alone = model(torch.tensor([x]), torch.tensor([y]))
            n = sum(t != IGNORE_INDEX for t in y)
            total, count = total + alone.item() * n, count + n
        _, leaky = model(blocks["idx"], blocks["targets"])  # no document masking
    assert packed.item() == pytest.approx(total / count, abs=1e-5)
    assert abs(leaky.item() - total / count) > 1e-4  # without masking the examples interact


def test_epochs_derive_steps():
    cfg = micro_train(epochs=2.0, batch_size=4, grad_accum=2, warmup_steps=1)
    assert derive_max_steps(cfg, 20) == 5  # ceil(2 * 20 / 8)
    assert derive_max_steps(micro_train(max_steps=9), 20) == 9


def test_run_sft_stage(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.manual_seed(0)
    save_model(GPT(micro_model(vocab_size=tok.vocab_size, block_size=64)), tmp_path / "base")
    data = make_sft_dataset(tmp_path / "sft_data", n=24)
    (tmp_path / "tok").mkdir()
    tok.backend.save(str(tmp_path / "tok" / "tokenizer.json"))
    seen = []
    res = run_sft(micro_train(epochs=1.0, max_steps=999, ckpt_interval=2), tmp_path / "base", data,
                  tmp_path / "tok", tmp_path / "sft", tmp_path / "work", on_metrics=lambda m, s: seen.append(m))
    st = res.stats
    assert st["dropped_too_long"] == 1 and st["examples"] == 18
    assert st["steps"] == math.ceil(st["blocks"] / 8)
    assert 0.0 < st["loss_fraction"] < 1.0 and 0.0 < st["end_share"] < 0.5
    assert math.isfinite(st["val_loss"]) and math.isfinite(st["train_loss"])
    assert {p.name for p in res.path.iterdir()} >= {"model.safetensors", "config.json", "run", "manifest.json"}
    assert {p.name for p in (res.path / "run").iterdir()} >= {"metrics.json", "log.jsonl"}
    assert json.loads((res.path / "run" / "metrics.json").read_text())["examples"] == 18
    assert any("loss/val" in m for m in seen) and any("sft/loss_fraction" in m for m in seen)
    assert load_model(res.path).config.block_size == 64
    assert not any((tmp_path / "work").glob("*/ckpt-*"))  # scratch cleared once published


def test_bad_sft_lines_name_the_file_and_line(tmp_path, tok):
    from wikigpt_core.train.data import DataError, render_sft_file

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": DIALOG}) + "\n" + "{not json\n")
    with pytest.raises(DataError, match=r"train.jsonl:2 is not valid JSON"):
        render_sft_file(path, tok)
    path.write_text(json.dumps({"messages": DIALOG[:1]}) + "\n")  # ends with a user turn
    with pytest.raises(DataError, match=r"train.jsonl:1: bad SFT example"):
        render_sft_file(path, tok)
