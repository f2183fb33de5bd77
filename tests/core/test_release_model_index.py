"""The model card's `model-index`: the eval report's figures in the Hub's eval-results schema,
read back with yaml and with huggingface_hub's own card parser."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.config import ReleaseConfig  # noqa: E402
from wikigpt_core.eval.lm_harness import HUB_DATASETS, LM_EVAL_FILE, TASK_NAMES, LmEvalOutcome  # noqa: E402
from wikigpt_core.model_io import save_model  # noqa: E402
from wikigpt_core.release import run_release  # noqa: E402
from wikigpt_core.release.model_card import PRODUCED_BY  # noqa: E402

LM_EVAL = LmEvalOutcome(
    "ok", tasks=["hellaswag", "arc_easy", "arc_challenge"], limit=50, lm_eval_version="0.4.9",
    results={c: {"hellaswag": {"acc": 0.25 + i / 100, "acc_norm": 0.26 + i / 100},
                 "arc_easy": {"acc": 0.31 + i / 100},
                 "arc_challenge": {"acc": 0.18 + i / 100, "acc_norm": 0.2 + i / 100}}
             for i, c in enumerate(("base", "sft", "dpo"))})


def _release(tmp: Path, model, tok_dir: Path, name: str, lm_eval: LmEvalOutcome | None) -> Path:
    dpo = tmp / f"{name}_dpo"
    save_model(model, dpo)
    eval_dir = tmp / f"{name}_eval"
    eval_dir.mkdir()
    (eval_dir / "report.json").write_text(json.dumps(support.REPORT))
    if lm_eval is not None:
        (eval_dir / LM_EVAL_FILE).write_text(json.dumps(lm_eval.to_json()))
    out = tmp / "tiny" / name
    return run_release(ReleaseConfig(repo_name="wikigpt-tiny-instruct"), dpo, tok_dir, eval_dir, out,
                       support.lineage_for(dpo, tok_dir, eval_dir), profile="tiny").path


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model_index")
    tok = support.train_tokenizer(tmp / "tok")
    model = support.random_model(tok.vocab_size)
    return {"with_lm_eval": _release(tmp, model, tmp / "tok", "with", LM_EVAL),
            "without": _release(tmp, model, tmp / "tok", "without", None)}


def _front(release: Path) -> dict:
    card = (release / "README.md").read_text()
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("\n---\n")[0].removeprefix("---\n"))


def _check_schema(index: list) -> None:
    """The Hub's model-index schema: a named entry whose results each carry task {type, name},
    dataset {name, type} and metrics [{type, value, name}] with numeric values."""
    assert isinstance(index, list) and len(index) == 1
    assert index[0]["name"] == "wikigpt-tiny-instruct"
    assert index[0]["results"]
    for result in index[0]["results"]:
        assert set(result) == {"task", "dataset", "metrics"}
        assert result["task"] == {"type": "text-generation", "name": "Text Generation"}
        assert isinstance(result["dataset"]["name"], str) and isinstance(result["dataset"]["type"], str)
        assert result["metrics"]
        for metric in result["metrics"]:
            assert set(metric) == {"type", "value", "name"}
            assert isinstance(metric["type"], str) and isinstance(metric["name"], str)
            assert isinstance(metric["value"], float)


def _metrics(result: dict) -> dict[str, float]:
    return {m["name"]: m["value"] for m in result["metrics"]}


def test_perplexity_per_checkpoint_equals_the_report(releases):
    index = _front(releases["without"])["model-index"]
    _check_schema(index)
    (ppl,) = index[0]["results"]  # no lm-eval outcome: perplexity only
    assert ppl["dataset"]["type"] == "wikimedia/wikipedia"
    assert "held-out" in ppl["dataset"]["name"] and "2017-01-01" in ppl["dataset"]["name"]
    assert {m["type"] for m in ppl["metrics"]} == {"perplexity"}
    assert _metrics(ppl) == {f"Perplexity, {PRODUCED_BY[c]}": v for c, v in support.REPORT["perplexity"].items()}
    names = list(_metrics(ppl))
    assert "pretraining" in names[0] and "supervised fine-tuning" in names[1] and "DPO" in names[2]


def test_lm_eval_tasks_equal_the_harness_outcome(releases):
    index = _front(releases["with_lm_eval"])["model-index"]
    _check_schema(index)
    ppl, *tasks = index[0]["results"]
    assert _metrics(ppl) == {f"Perplexity, {PRODUCED_BY[c]}": v for c, v in support.REPORT["perplexity"].items()}
    assert [t["dataset"]["name"] for t in tasks] == [TASK_NAMES[t] for t in LM_EVAL.tasks]
    for task_name, result in zip(LM_EVAL.tasks, tasks):
        ds = result["dataset"]
        assert ds["type"] == HUB_DATASETS[task_name]
        assert ds["args"] == {"num_few_shot": 0, "limit": 50}
        expected = {f"{metric}, {PRODUCED_BY[c]}": value
                    for c, per_task in LM_EVAL.results.items()
                    for metric, value in per_task[task_name].items()}
        assert _metrics(result) == expected
        assert {m["type"] for m in result["metrics"]} == set(LM_EVAL.results["dpo"][task_name])
    # the two ARC tasks share a Hub dataset and are told apart by its configuration
    assert {t["dataset"].get("config") for t in tasks[1:]} == {"ARC-Easy", "ARC-Challenge"}
    card = (releases["with_lm_eval"] / "README.md").read_text()
    assert "Standard benchmarks" in card and "HellaSwag" in card


def test_huggingface_hub_reads_the_same_results(releases):
    from huggingface_hub import EvalResult, ModelCard, metadata_load
    from huggingface_hub.repocard_data import eval_results_to_model_index

    for release in releases.values():
        front = _front(release)
        assert metadata_load(release / "README.md") == front
        card = ModelCard((release / "README.md").read_text())
        results = card.data.eval_results
        assert card.data.model_name == "wikigpt-tiny-instruct"
        assert results and all(isinstance(r, EvalResult) for r in results)
        flat = {(r.dataset_type, r.dataset_config, r.metric_name): r.metric_value for r in results}
        expected = {(res["dataset"]["type"], res["dataset"].get("config"), m["name"]): m["value"]
                    for res in front["model-index"][0]["results"] for m in res["metrics"]}
        assert flat == expected
        assert all(r.task_type == "text-generation" and r.task_name == "Text Generation" for r in results)
        # and writing them back gives the card's block unchanged
        assert eval_results_to_model_index(card.data.model_name, results) == front["model-index"]
        assert card.data.to_dict()["model-index"] == front["model-index"]


def test_no_figures_no_model_index(tmp_path):
    from wikigpt_core.release.model_card import model_index

    assert model_index("x", {}) == []
    assert model_index("x", {"perplexity": {"base": float("nan")}}) == []
    assert model_index("x", {}, LmEvalOutcome("unavailable", tasks=["hellaswag"], reason="offline")) == []
    only_dpo = model_index("x", {"perplexity": {"dpo": 12.5}})
    assert [m["name"] for m in only_dpo[0]["results"][0]["metrics"]] == [f"Perplexity, {PRODUCED_BY['dpo']}"]
