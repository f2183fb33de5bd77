"""Small real inputs for the model/training tests: a trained byte-level BPE tokenizer with the
four specials, uint16 token shards, an SFT dataset and preference pairs, all on disk in the
formats the pipeline writes."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wikigpt_core.config import TrainConfig
from wikigpt_core.model import GPTConfig
from wikigpt_core.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, WikiTokenizer

WORDS = ("the river city north king music school born war film river island church team "
         "language history famous century village museum railway painter novel bridge").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
            for _ in range(n)]


def make_tokenizer(directory: Path, vocab_size: int = 512) -> WikiTokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences(500), trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / TOKENIZER_FILE))
    return WikiTokenizer.load(directory)


def make_shards(directory: Path, tok: WikiTokenizer, n_docs: int = 400) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    docs = sentences(n_docs, seed=1)
    for name, part in (("train", docs[: n_docs * 9 // 10]), ("val", docs[n_docs * 9 // 10:])):
        ids: list[int] = []
        for d in part:
            ids += [tok.doc_id] + tok.encode(d)
        np.asarray(ids, dtype=np.uint16).tofile(directory / f"{name}.bin")
    (directory / "meta.json").write_text(json.dumps({"vocab_size": tok.vocab_size, "dtype": "uint16"}))
    return directory


def dialog(i: int, rng: random.Random) -> list[dict]:
    q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    return [{"role": "user", "content": f"What about {q}?"}, {"role": "assistant", "content": a}]


def make_sft_dataset(directory: Path, n: int = 40, long_examples: int = 1) -> Path:
    rng = random.Random(3)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": dialog(i, rng), "task": "qa", "answer": ""} for i in range(n)]
    for _ in range(long_examples):  # longer than any tiny block: must be dropped
        rows.append({"messages": [{"role": "user", "content": " ".join(WORDS * 20)},
                                  {"role": "assistant", "content": "river"}], "task": "qa"})
    cut = n * 3 // 4
    for name, part in (("train", rows[:cut] + rows[n:]), ("heldout", rows[cut:n])):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return directory


def make_pairs(directory: Path, n: int = 24) -> Path:
    rng = random.Random(5)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        prompt = dialog(i, rng)[:1]
        lines.append({"prompt": prompt, "chosen": "the river museum",
                      "rejected": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
                      "kind": "sampled" if i % 4 else "false_premise"})
    (directory / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return directory


def micro_model(vocab_size: int = 300, block_size: int = 64) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                     mlp_multiple_of=16)


def micro_train(**over) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2, eval_interval=3,
                eval_iters=2, sample_interval=3, ckpt_interval=3, log_interval=1, keep_last_k=2,
                compile="off")
    base.update(over)
    return TrainConfig(**base)


def micro_toml(vocab_size: int, **pretrain) -> str:
    """A WIKIGPT_CONFIG file for the stage CLIs: the `micro_model` shape plus `pretrain` values."""
    model = micro_model(vocab_size)
    shape = {f: getattr(model, f) for f in
             ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_multiple_of")}

    def table(name: str, values: dict) -> str:
        return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    return table("model", shape) + table("tokenizer", {"vocab_size": vocab_size}) + table("pretrain", pretrain)


@pytest.fixture(autouse=False)
def single_thread():
    """Tiny models run fastest on one intra-op thread (OpenMP overhead dominates, worse on a
    shared CPU); restored afterwards so other tests keep the default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def result_stats(stdout: str) -> dict:
    """The stats of a stage CLI run outside Dagster: its last line is the result JSON."""
    last = [ln for ln in stdout.splitlines() if ln.startswith("{")][-1]
    result = json.loads(last)
    assert result["type"] == "stage_result"
    return result["stats"]


def stage_spec(directory: Path, stage: str, toml: str, inputs: dict[str, Path], out: Path,
               work: Path) -> Path:
    """A spec file for `python -m wikigpt_core.run STAGE --spec FILE`: the tiny profile plus
    `toml` overrides, the given input dirs, out and work (what an orchestrator resolves)."""
    from wikigpt_core.config import load_settings
    from wikigpt_core.stages import resolve_spec

    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / f"{stage}.toml"
    conf.write_text(toml)
    settings = load_settings("tiny", conf, env=False)
    return resolve_spec(settings, stage, inputs, out=out, work=work).write(directory / f"{stage}.spec.json")


def greedy_recompute(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by full recomputation, no cache: the reference the cached decoders
    are checked against. Ends after a stop id, or when the context is full."""
    from wikigpt_core.generation import STOP_IDS

    seq, out = list(prompt), []
    with torch.no_grad():
        while len(out) < max_new_tokens and len(seq) < model.config.block_size:
            logits, _ = model(torch.tensor([seq]))
            token = int(logits[0, -1].argmax())
            out.append(token)
            seq.append(token)
            if token in STOP_IDS:
                break
    return out
