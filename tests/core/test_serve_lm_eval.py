"""lm-evaluation-harness against `wikigpt serve`, beside `--model hf` on the same release.

The tasks are written here (YAML + JSONL, found through `include_path`) from articles the
project's own dump and clean stages extract from the embedded enwiki sample: a rolling
perplexity task, a last-word multiple-choice task and a short-answer chat task. Through the
server, lm-eval's `local-completions` (string prompts and token ids alike) must score every
document as `hf` does, within 1e-3 nats; `local-chat-completions` with the chat template must
generate what `hf` generates. The release's generation defaults must leave a caller's
`max_length` in charge of transformers' `generate`.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.config import CleanConfig, DumpConfig  # noqa: E402
from wikigpt_core.data.clean import run_clean  # noqa: E402
from wikigpt_core.data.dump import run_dump  # noqa: E402
from wikigpt_core.model import GPT, GPTConfig  # noqa: E402
from wikigpt_core.tokenizer import SPECIAL_TOKENS  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api]")

MODEL = "wikigpt-tiny-instruct"
BLOCK = 96
PPL, CLOZE, CHAT = "wiki_ppl", "wiki_cloze", "wiki_chat"
TOLERANCE = 1e-3
"""Nats per document between the server and transformers."""
SERVED_MAX_LENGTH = BLOCK
"""lm-eval sends an API model rolling windows of max_length - 1 tokens, plus one token each
scoring request generates: together the context."""
HF_MAX_LENGTH = BLOCK - 2
"""`hf` windows are max_length + 1 tokens: this gives both models the same windows."""


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("articles")
    run_dump(DumpConfig(), root / "dump", root / "w_dump")
    run_clean(CleanConfig(min_chars=500), root / "dump", root / "clean", root / "w_clean")
    return pq.read_table(root / "clean" / "articles.parquet")["text"].to_pylist()


@pytest.fixture(scope="module")
def release(tmp_path_factory, texts) -> Path:
    """A random tiny model with a BPE trained on the articles, as a release folder."""
    tmp = tmp_path_factory.mktemp("release")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts[:20], trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    (tmp / "tok").mkdir()
    tk.save(str(tmp / "tok" / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=BLOCK, n_layer=2, n_head=4, n_embd=64,
                          mlp_multiple_of=32))
    with torch.no_grad():  # larger block weights: replies that are text, not one repeated token
        for name, p in model.named_parameters():
            if name.startswith("blocks."):
                p.mul_(4)
    return support.build_release(tmp, model.eval(), tmp / "tok", "lm_eval")


@pytest.fixture(scope="module")
def server(release):
    started = support.Server(release).wait()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, texts) -> Path:
    directory = tmp_path_factory.mktemp("tasks")
    sentences = [s.rstrip(".!?") for t in texts for s in re.split(r"(?<=[.!?])\s+", t)
                 if 8 <= len(s.split()) <= 20 and s.isascii()]
    picked = random.Random(0).sample(sentences, 11)
    _write(directory, PPL, [{"text": t[:700]} for t in texts[:4]],
           "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
           "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    _write(directory, CLOZE, _cloze(picked[:8]),
           "output_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
           "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
           "metric_list:\n  - metric: acc\n")
    _write(directory, CHAT, [{"question": f"Complete the sentence: {' '.join(s.split()[:6])}",
                              "answer": s.split()[6]} for s in picked[:6]],
           "output_type: generate_until\ndoc_to_text: \"{{question}}\"\ndoc_to_target: \"{{answer}}\"\n"
           "generation_kwargs:\n  until: [\"\\n\\n\"]\n  max_gen_toks: 12\n  do_sample: false\n"
           "metric_list:\n  - metric: exact_match\n")
    return directory


def _cloze(sentences: list[str]) -> list[dict]:
    """The sentence without its last word; four candidate words, the true one rotating."""
    docs = []
    for i, s in enumerate(sentences):
        words = s.split()
        choices = [o.split()[-1] for o in sentences if o is not s][:3]
        choices.insert(i % 4, words[-1])
        docs.append({"context": " ".join(words[:-1]), "choices": choices, "label": i % 4})
    return docs


def _write(directory: Path, task: str, docs: list[dict], body: str) -> None:
    data = directory / f"{task}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / f"{task}.yaml").write_text(
        f"task: {task}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n" + body)


def evaluate(tasks: Path, model: str, model_args: dict, names: list[str], **kwargs) -> dict:
    """Per task, each document's responses, in document order."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args=model_args, tasks=names, batch_size=1,
                          task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
                          device="cpu", **kwargs)
    return {t: [s["filtered_resps"] for s in sorted(out["samples"][t], key=lambda s: s["doc_id"])]
            for t in names}


def hf_args(release: Path) -> dict:
    return {"pretrained": str(release), "dtype": "float32", "max_length": HF_MAX_LENGTH}


def served_args(server, release: Path, endpoint: str, **more) -> dict:
    return {"model": MODEL, "base_url": f"{server.url}/v1/{endpoint}", "tokenizer": str(release),
            "tokenizer_backend": "huggingface", "max_length": SERVED_MAX_LENGTH, "num_concurrent": 1,
            **more}


def loglikelihoods(responses: list) -> list[float]:
    """A document's numbers: a rolling document's one log-likelihood, or one per choice."""
    return [r[0] if isinstance(r, (list, tuple)) else r for r in responses]


@pytest.fixture(scope="module")
def hf_scores(tasks, release) -> dict:
    return evaluate(tasks, "hf", hf_args(release), [PPL, CLOZE])


@pytest.mark.parametrize("tokenized", [False, True], ids=["strings", "token_ids"])
def test_local_completions_score_every_document_as_transformers(server, release, tasks, hf_scores,
                                                                tokenized):
    served = evaluate(tasks, "local-completions",
                      served_args(server, release, "completions", tokenized_requests=tokenized),
                      [PPL, CLOZE])
    for task in (PPL, CLOZE):
        assert len(served[task]) == len(hf_scores[task]) > 0
        for ours, theirs in zip(served[task], hf_scores[task], strict=True):
            assert loglikelihoods(ours) == pytest.approx(loglikelihoods(theirs), abs=TOLERANCE), task


def test_local_chat_completions_generate_as_transformers(server, release, tasks):
    served = evaluate(tasks, "local-chat-completions", served_args(server, release, "chat/completions"),
                      [CHAT], apply_chat_template=True)
    hf = evaluate(tasks, "hf", hf_args(release), [CHAT], apply_chat_template=True)
    assert served[CHAT] == hf[CHAT]
    assert any(r[0].strip() for r in hf[CHAT])  # replies with text: the comparison means something


def test_generate_honours_a_callers_max_length(release):
    """The release's generation_config sets no max_new_tokens (which `generate` would let
    override the caller's max_length), and defaults max_length to the context."""
    gen = json.loads((release / "generation_config.json").read_text())
    assert "max_new_tokens" not in gen and gen["max_length"] == BLOCK
    model = transformers.AutoModelForCausalLM.from_pretrained(release, dtype=torch.float32).eval()
    prompt = torch.tensor([transformers.AutoTokenizer.from_pretrained(release)("The history of")["input_ids"]])
    with torch.no_grad():  # stop tokens suppressed: only the length limit can end it
        out = model.generate(prompt, max_length=prompt.shape[1] + 8, do_sample=False, suppress_tokens=[0, 3])
    assert out.shape[1] == prompt.shape[1] + 8
