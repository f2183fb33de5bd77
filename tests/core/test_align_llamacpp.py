"""The teacher stages against a real LLM: llama.cpp's OpenAI-compatible server (llama-cpp-python,
its own venv: tests/llamacpp/) serving GGUF exports the project itself makes.

Two models are served:

- a teacher trained here on exactly the teacher's reply format (tests/llamacpp/teacher_model.py:
  the stages' own requests over this corpus, answered by the offline rule teacher, distilled
  into a tiny GPT and exported like any release). With constrained decoding on (the reply's
  JSON schema, which llama.cpp compiles to a grammar) and the stages' default filters, the SFT
  data, preference data and eval judge runs succeed within their budgets;
- a tiny random model: its words are noise, so with the default filters, or without the
  schema, its replies are rejected and the stage stops with the budget error, naming the
  reasons, and publishes nothing.

Requests per example are printed for both (run with -s to see them).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.core import test_release_support as support
from tests.llamacpp.server import LlamaServer, llamacpp_python
from tests.llamacpp.teacher_model import build_teacher_gguf
from wikigpt_core.align.preferences import run_preferences
from wikigpt_core.align.sft_data import run_sft_data
from wikigpt_core.config import EvalConfig, PreferenceConfig, SFTDataConfig, TeacherConfig
from wikigpt_core.evaluate import run_eval
from wikigpt_core.llm import text as T
from wikigpt_core.llm.budget import TeacherBudgetError, request_cap
from wikigpt_core.llm.client import TeacherError, make_client
from wikigpt_core.model import GPT
from wikigpt_core.model_config import GPTConfig
from wikigpt_core.model_io import save_model
from wikigpt_core.release.gguf_export import export_gguf

ALIAS = "wikigpt-tiny-llamacpp"
TEACHER = "wikigpt-teacher-llamacpp"
N_CTX = 2_048
ARTICLES = [
    ("Ada Lovelace", "Ada Lovelace was an English mathematician and writer. She is chiefly known for her "
                     "work on the Analytical Engine. The history of the engine began in 1834."),
    ("Paris", "Paris is the capital of France. The city is known for its museums and its river. "
              "Many people visit the city in the summer."),
    ("Sky", "The sky is blue because air scatters short wavelengths of sunlight more than long ones. "
            "At sunset the sky is often red. The effect was described in 1871."),
    ("Wikipedia", "Wikipedia is a free online encyclopedia written by a community of volunteers. "
                  "The history of the encyclopedia began in 2001. It is one of the most visited sites."),
]
CORPUS = [{"id": i + 1, "title": t, "url": f"https://en.wikipedia.org/wiki/{t.replace(' ', '_')}", "text": x}
          for i, (t, x) in enumerate(ARTICLES)]
# The success run keeps every default filter (grounding, language, length, duplicates). No QA:
# with one passage per article most QA variants have no further fact to ask about (the rules
# answer those with nothing), and this model, which must answer something, repeats a question.
SUCCESS = SFTDataConfig(n_examples=12, mix={"summarize": 0.75, "extract": 0.25}, heldout_fraction=0.5,
                        passage_chars=300, max_passages_per_article=1, min_examples=12)
STRICT = SFTDataConfig(n_examples=8, heldout_fraction=0.5, passage_chars=300, max_passages_per_article=1,
                       min_english_ratio=0.0)
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    llamacpp_python()  # skip (locally) / fail (CI) before building anything
    root = tmp_path_factory.mktemp("llamacpp")
    tok = support.train_tokenizer(root / "tokenizer")
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=N_CTX, n_layer=2, n_head=4, n_embd=64,
                    mlp_multiple_of=32)
    model = GPT(cfg).eval()
    release = support.build_release(root, model, root / "tokenizer")
    export_gguf(release, root / "model.gguf", "f32")
    save_model(model, root / "checkpoint")
    for seed, name in ((4, "base"), (5, "dpo")):  # the eval compares three distinct checkpoints
        torch.manual_seed(seed)
        save_model(GPT(cfg).eval(), root / name)
    (root / "corpus").mkdir()
    pq.write_table(pa.Table.from_pylist(CORPUS), root / "corpus" / "corpus.parquet")
    (root / "shards").mkdir()
    ids = tok.encode(support.TEXT * 40)
    np.array(ids[: 2 * N_CTX + 2], dtype=np.uint16).tofile(root / "shards" / "val.bin")
    return root


@pytest.fixture(scope="module")
def served(corpus):
    """The random model."""
    with LlamaServer(corpus / "model.gguf", alias=ALIAS, n_ctx=N_CTX, log=corpus / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def teacher_served(corpus):
    """The teacher trained on the reply format, served with the context it was built for."""
    gguf, figures = build_teacher_gguf(corpus / "teacher", CORPUS, SUCCESS)
    print(f"\nFIGURES teacher model: {json.dumps(figures)}")
    with LlamaServer(gguf, alias=TEACHER, n_ctx=figures["block_size"], log=corpus / "teacher_server.log") as server:
        yield server


def _teacher(**kw) -> TeacherConfig:
    """The random model's teacher settings: strings of at most 24 characters."""
    base = dict(backend="openai", base_url="http://127.0.0.1:9/v1", model=ALIAS, concurrency=2,
                max_retries=1, retry_backoff_s=0.1, timeout_s=120, max_tokens=1_000, json_schema=True,
                schema_format="json_object", max_reply_chars=24, min_failures=5)
    return TeacherConfig(**(base | kw))


def _trained(**kw) -> TeacherConfig:
    """The trained teacher's settings: default budget (share, cap), a schema that fits its replies."""
    return _teacher(**({"model": TEACHER, "max_reply_chars": 400} | kw))


def _record(name: str, stats: dict, asked: int, prefix: str = "teacher_") -> None:
    FIGURES[name] = {"requests": stats[f"{prefix}requests"], "asked": asked,
                     "accepted": stats.get(f"{prefix}replies_accepted"),
                     "requests_per_item": stats.get(f"{prefix}requests_per_item"),
                     "requests_per_item_asked": stats[f"{prefix}requests_per_item_asked"]}
    assert FIGURES[name]["requests_per_item_asked"] == round(stats[f"{prefix}requests"] / asked, 3)
    print(f"\nFIGURES {name}: {json.dumps(FIGURES[name])}")


def _record_trip(name: str, e: TeacherBudgetError) -> None:
    FIGURES[name] = {"requests": e.requests, "asked": e.asked, "accepted": None,
                     "requests_per_item_asked": e.requests_per_item}
    print(f"\nFIGURES {name}: {json.dumps(FIGURES[name])} :: {str(e)[:400]}")


@pytest.fixture(scope="module")
def sft(corpus, teacher_served):
    res = run_sft_data(SUCCESS, _trained(base_url=teacher_served.url), corpus / "corpus",
                       corpus / "sft_dataset", corpus / "cache")
    return corpus / "sft_dataset", res


def test_sft_dataset_from_a_real_server_within_budget(corpus, sft):
    out, res = sft
    s = res.stats
    _record("sft_dataset success", s, SUCCESS.n_examples)
    defaults = SFTDataConfig()
    assert (SUCCESS.min_grounding, SUCCESS.min_english_ratio, SUCCESS.max_response_words) == \
        (defaults.min_grounding, defaults.min_english_ratio, defaults.max_response_words)
    assert s["examples_train"] + s["examples_heldout"] == SUCCESS.n_examples
    assert s["examples_summarize"] == 9 and s["examples_extract"] == 3
    assert s["examples_heldout"] > 0 and s["teacher_model"] == TEACHER
    # Real server accounting: tokens counted by llama.cpp's own tokenizer.
    assert s["teacher_prompt_tokens"] > 100 * s["teacher_requests"] > 0 and s["teacher_completion_tokens"] > 0
    assert s["teacher_requests"] <= request_cap(_trained(), SUCCESS.n_examples)
    assert s["teacher_failures"] == 0 and s["dropped_bad_reply"] == 0  # the schema held
    passages = {p["passage_id"]: p["text"] for p in map(json.loads, (out / "passages.jsonl").read_text().splitlines())}
    rows = [json.loads(x) for f in ("train.jsonl", "heldout.jsonl") for x in (out / f).read_text().splitlines()]
    for r in rows:  # what the model wrote is about the passage, not noise
        response, passage = r["messages"][1]["content"], passages[r["passage_id"]]
        assert response.strip() and T.grounding(response, passage) >= defaults.min_grounding
        if r["task"] == "extract":  # every extracted item is copied from the passage
            assert r["answer"] and all(i in passage for i in r["answer"].split("; "))
    assert "the language model `wikigpt-teacher-llamacpp`" in (out / "README.md").read_text()


def test_sft_dataset_with_default_filters_trips_the_budget(corpus, served, tmp_path):
    out = tmp_path / "sft_strict"
    teacher = _teacher(base_url=served.url)
    with pytest.raises(TeacherBudgetError) as e:
        run_sft_data(STRICT, teacher, corpus / "corpus", out, tmp_path / "cache")
    msg = str(e.value)
    assert msg.startswith("sft_dataset: stopped by the teacher failure budget:")
    assert "Commonest failure reasons: " in msg and "(e.g. '" in msg and "Nothing was published" in msg
    assert f"to openai:{served.url}:{ALIAS} for 8 examples asked for" in msg
    sent = int(msg.split(" requests sent")[0].rsplit(". ", 1)[1])
    assert sent == e.value.requests and e.value.asked == STRICT.n_examples
    assert 0 < sent <= request_cap(teacher, STRICT.n_examples)
    assert f"{sent / STRICT.n_examples:.2f} per example asked for" in msg
    _record_trip("sft_dataset trip", e.value)
    assert not out.exists() and not list(tmp_path.glob(".sft_strict.tmp-*"))


PREF = PreferenceConfig(n_prompts=4, samples_per_prompt=2, false_premise_fraction=0.5, max_new_tokens=8,
                        min_margin=0.0, min_pairs=2)
EVAL = EvalConfig(ppl_batches=1, ppl_batch_size=1, harness_n=2, pairwise_n=2, max_new_tokens=8)


def test_preferences_and_judge_from_a_real_server_within_budget(corpus, teacher_served, sft):
    res = run_preferences(PREF, _trained(base_url=teacher_served.url), corpus / "checkpoint", sft[0],
                          corpus / "tokenizer", corpus / "prefs", corpus / "cache")
    s = res.stats
    _record("preference_dataset success", s, PREF.n_prompts)
    assert s["pairs"] >= PREF.min_pairs and s["pairs_false_premise"] == 2
    assert 0 < s["teacher_requests"] <= 2 * 2 + 2  # both orders of each sampled pair, one per false premise
    assert s["teacher_replies_failed"] == 0 and s["teacher_failures"] == 0
    pairs = [json.loads(x) for x in (corpus / "prefs" / "pairs.jsonl").read_text().splitlines()]
    for p in (p for p in pairs if p["kind"] == "false_premise"):  # the refusal names the false premise
        assert "false premise" in p["chosen"] and p["chosen"] != p["rejected"]
    assert "the language model `wikigpt-teacher-llamacpp`" in (corpus / "prefs" / "README.md").read_text()

    ckpts = {"base": corpus / "base", "sft": corpus / "checkpoint", "dpo": corpus / "dpo"}
    rep = run_eval(EVAL, _trained(base_url=teacher_served.url), ckpts, corpus / "shards", sft[0],
                   corpus / "tokenizer", corpus / "report", cache_dir=corpus / "cache")
    e = rep.stats
    n = e["pairwise_prompts"]
    _record("eval_report judge success", e, 4 * n, prefix="judge_")
    assert n >= 1 and e["judge_model"] == TEACHER
    # Both orders, two passes: every verdict parsed. The random checkpoints' replies repeat, and a
    # comparison asked twice is sent once (the same batch, or the cache), so requests may be fewer.
    assert e["judge_replies_accepted"] == 4 * n and e["judge_replies_failed"] == 0
    assert 0 < e["judge_requests"] <= 4 * n and e["judge_failures"] == 0
    report = json.loads((corpus / "report" / "report.json").read_text())
    assert all(v["n"] == n for v in report["pairwise"].values())
    md = (corpus / "report" / "report.md").read_text()
    assert "the language model `wikigpt-teacher-llamacpp`" in md and "No model judged" not in md


def test_judge_without_the_schema_trips_the_budget_and_publishes_nothing(corpus, served, sft, tmp_path):
    # Plain JSON mode: the server still emits JSON, but not the fields a verdict needs.
    teacher = _teacher(json_schema=False, max_tokens=48, min_failures=3, base_url=served.url)
    out = tmp_path / "prefs"
    with pytest.raises(TeacherBudgetError, match=r"preference_dataset: stopped by the teacher failure budget: "
                                                 r".*bad_reply x\d+ \(e\.g\. .*Nothing was published") as e:
        run_preferences(PREF, teacher, corpus / "checkpoint", sft[0], corpus / "tokenizer", out, tmp_path / "cache")
    assert 0 < e.value.requests <= request_cap(teacher, 2 * 2 + 2)
    _record_trip("preference_dataset trip", e.value)
    assert not out.exists() and not list(tmp_path.glob(".prefs.tmp-*"))

    ckpts = {"base": corpus / "base", "sft": corpus / "checkpoint", "dpo": corpus / "dpo"}
    report = tmp_path / "report"
    with pytest.raises(TeacherBudgetError, match=r"eval_report: stopped by the teacher failure budget: .*bad_reply") as e:
        run_eval(EVAL, teacher, ckpts, corpus / "shards", sft[0], corpus / "tokenizer", report,
                 cache_dir=tmp_path / "cache")
    _record_trip("eval_report judge trip", e.value)
    assert not report.exists() and not list(tmp_path.glob(".report.tmp-*"))


def test_a_client_error_from_the_real_server_is_not_retried(served):
    """A prompt longer than the served context is a 4xx from llama.cpp: failed at once, not retried."""
    from wikigpt_core.llm.prompts import judge_request

    client = make_client(_teacher(max_retries=3, base_url=served.url), None)
    long = " ".join(["mathematician"] * 4 * N_CTX)
    (result,) = client.complete_many([judge_request(long, "a", "b")], kinds=["judge"])
    assert client.usage.requests == 1 and client.usage.retries == 0 and client.usage.failures == 1
    assert "HTTP 4" in str(result)


def test_a_response_format_the_server_does_not_take_names_the_setting(served):
    """llama-cpp-python's server knows only the json_object form (it answers the structured-outputs
    form with HTTP 500): the failure says which teacher setting to change."""
    from wikigpt_core.llm.prompts import judge_request

    client = make_client(_teacher(schema_format="json_schema", max_retries=0, base_url=served.url), None)
    (result,) = client.complete_many([judge_request("Is the sky blue?", "Yes.", "No.")], kinds=["judge"])
    assert isinstance(result, TeacherError) and client.usage.requests == 1
    assert "response_format" in str(result) and "teacher.schema_format = 'json_object'" in str(result)
