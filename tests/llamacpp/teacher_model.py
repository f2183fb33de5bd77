"""A tiny teacher LM for the llama.cpp tests, trained here on the teacher's exact reply format
(no tests in here).

The data is what the project itself makes: the requests the teacher stages send (`prompts.py`:
SFT examples over the corpus passages, false-premise contrasts over its entities, judge
comparisons of responses) answered by the built-in offline rule teacher (`offline.py`), whose
replies pass the stages' filters by construction. A small GPT learns to answer them the way
the rules do (a distillation of the rules into a language model) and is exported to GGUF like
any release, so llama.cpp's server serves a model that can actually do the job, with no
filter loosened. Every training conversation fits the model's context, prompt and reply.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wikigpt_core.align.false_premise import gallery_prompts, make_false_premises
from wikigpt_core.align.passages import article_passages
from wikigpt_core.align.sft_data import TASKS, _spec_queue, user_message
from wikigpt_core.chat import IGNORE_INDEX, render_example
from wikigpt_core.config import SFTDataConfig
from wikigpt_core.llm import offline, prompts
from wikigpt_core.llm import text as T
from wikigpt_core.model import GPT
from wikigpt_core.model_config import GPTConfig
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer


def _offline(request: str) -> dict:
    out = offline.reply({"messages": [{"role": "user", "content": request}]})
    return json.loads(out["text"])


def _reply_text(kind: str, obj: dict) -> str | None:
    """The reply as the model should write it, or None when the rules had nothing to say
    (an empty field: the reply schema demands at least one character)."""
    if kind == "judge":  # the judge is told integers 1-10
        obj = {k: int(min(10, max(1, round(v)))) for k, v in obj.items()}
    elif any(v in ("", []) for v in obj.values()):
        return None
    return json.dumps(obj, ensure_ascii=False)


def teacher_conversations(articles: list[dict], sft: SFTDataConfig, seeds: range = range(6)) -> list[dict]:
    """(request kind, request, reply) for the requests the stages send over `articles`."""
    passages = [p for a in articles for p in article_passages(a, sft.passage_chars, sft.max_passages_per_article,
                                                               sft.min_english_ratio, "en")[0]]
    out: list[dict] = []
    seen: set[str] = set()

    def add(kind: str, request: str) -> None:
        if request in seen:
            return
        seen.add(request)
        text = _reply_text(kind, _offline(request))
        if text is not None:
            out.append({"kind": kind, "request": request, "reply": text})

    # SFT examples: every (task, passage, variant) the stage may ask for.
    for ti, task in enumerate(TASKS):
        for spec in _spec_queue(task, passages, offset=ti * len(passages) // len(TASKS)):
            add(task, prompts.example_request(spec.task, spec.title, spec.passage, spec.variant, spec.instruction))
    # False-premise contrasts over the corpus entities (several draws of questions and years).
    entities = {a["title"]: a["text"] for a in articles}
    for seed in seeds:
        for fp in make_false_premises(entities, 4 * len(entities), seed, exclude=gallery_prompts()):
            add("false_premise", prompts.false_premise_request(fp.question, fp.reason, fp.context))
    # Judge comparisons: user messages about the passages, responses of every quality (the
    # rules' own answers, other passages' sentences, fragments, cut-off replies, nothing much).
    rng = random.Random(0)
    sentences = [s for a in articles for s in T.sentences(a["text"])]
    for p in passages:
        good = offline.summarize(p.text)
        msg = user_message("summarize", p.title, p.text, "Summarize the following passage in one or two sentences.")
        pool = [good, rng.choice(sentences), " ".join(good.split()[:3]), f"{good} {offline.CUT_MARK}",
                "the the the the", p.title, rng.choice(sentences) + " " + rng.choice(sentences)]
        for _ in range(len(seeds) * 2):
            a, b = rng.sample(pool, 2)
            ref = rng.choice(["", good])
            add("judge", prompts.judge_request(msg, a, b, ref))
            add("judge", prompts.judge_request(rng.choice(sentences), a, b, ref))
    return out


def train_tokenizer(directory: Path, texts: list[str], vocab_size: int = 768) -> WikiTokenizer:
    """Byte-level BPE over the teacher's own conversations; the four specials first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return WikiTokenizer.load(directory)


def train_teacher(convs: list[dict], tok: WikiTokenizer, *, steps: int = 300, lr: float = 3e-3,
                  n_layer: int = 2, n_embd: int = 128, batch: int = 16, seed: int = 0,
                  min_context: int = 0, log=None) -> tuple[GPT, dict]:
    """A GPT trained on the replies of `convs` (loss on the reply and its <|end|> only).
    Returns the model and {"block_size", "examples", "final_loss", "reply_token_accuracy"}."""
    torch.manual_seed(seed)
    rows = [render_example([{"role": "user", "content": c["request"]},
                            {"role": "assistant", "content": c["reply"]}], tok) for c in convs]
    longest = max(len(ids) for ids, _ in rows)
    # Room for every prompt and its reply (positions are rotary: a longer context costs nothing).
    block = max(min_context, 64 * math.ceil((longest + 64) / 64))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block, n_layer=n_layer, n_head=4, n_embd=n_embd,
                    mlp_multiple_of=32)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    # Half of every batch is SFT examples: their content must pass the stage's filters, while
    # judge and false-premise replies are held to their format (which the schema enforces).
    rng = random.Random(seed)
    sft = [i for i, c in enumerate(convs) if c["kind"] in TASKS]
    rest = [i for i, c in enumerate(convs) if c["kind"] not in TASKS] or sft
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]

    def tensors(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        T_ = max(len(rows[i][0]) for i in idx)
        x = torch.full((len(idx), T_ - 1), tok.end_id, dtype=torch.long)
        y = torch.full((len(idx), T_ - 1), IGNORE_INDEX, dtype=torch.long)
        for r, i in enumerate(idx):
            ids, labels = rows[i]
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            y[r, :len(ids) - 1] = torch.tensor(labels[1:])
        return x, y

    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        for g in opt.param_groups:  # short warmup, cosine decay
            g["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = tensors(rng.sample(sft, min(len(sft), batch // 2)) + rng.sample(rest, min(len(rest), batch // 2)))
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and step % 25 == 0:
            log(f"step {step} loss {loss.item():.4f}")
    model.eval()
    hit = total = 0
    losses = []
    with torch.no_grad():
        for b in batches:
            x, y = tensors(b)
            logits, l = model(x, y)
            losses.append(l.item())
            m = y != IGNORE_INDEX
            hit += (logits.argmax(-1)[m] == y[m]).sum().item()
            total += m.sum().item()
    return model, {"block_size": block, "examples": len(rows), "final_loss": round(sum(losses) / len(losses), 4),
                   "reply_token_accuracy": round(hit / max(1, total), 4)}


def build_teacher_gguf(root: Path, articles: list[dict], sft: SFTDataConfig, *, steps: int = 250,
                       min_context: int = 1_024, log=None) -> tuple[Path, dict]:
    """Train the teacher on `articles`' requests and export it: (GGUF path, training figures;
    "block_size" is its context, at least `min_context`)."""
    from tests.core import test_release_support as support
    from wikigpt_core.release.gguf_export import export_gguf

    convs = teacher_conversations(articles, sft)
    tok = train_tokenizer(root / "teacher_tokenizer", [c["request"] + c["reply"] for c in convs])
    model, figures = train_teacher(convs, tok, steps=steps, min_context=min_context, log=log)
    release = support.build_release(root, model, root / "teacher_tokenizer", name="teacher")
    gguf = root / "teacher.gguf"
    export_gguf(release, gguf, "f32")
    return gguf, figures
