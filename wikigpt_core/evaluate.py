"""The `eval_report` stage: perplexity, pairwise judge, judge-free harness, gallery, cost table,
charts (PNG, inlined in report.html) and, optionally, standard benchmarks through lm-eval.

A launched stage: every model pass runs on the GPU box under the runtime's autocast (bf16 on
CUDA), and each checkpoint's prompts are prefilled together.

    python -m wikigpt_core.run eval_report --spec FILE
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from wikigpt_core.align.preferences import read_jsonl
from wikigpt_core.artifacts import ArtifactWriter, StageResult
from wikigpt_core.config import EvalConfig, TeacherConfig
from wikigpt_core.eval.charts import CHART_CAPTIONS, CHART_DIR, read_log, report_charts
from wikigpt_core.eval.gallery import run_gallery
from wikigpt_core.eval.generation import Reply, autocast_label, generate_replies, inference_runtime
from wikigpt_core.eval.harness import HarnessRecord, score_harness
from wikigpt_core.eval.pairwise import PairCase, judge_debiased, win_tie_loss
from wikigpt_core.eval.lm_harness import (LM_EVAL_FILE, LmEvalOutcome, lm_eval_markdown, lm_eval_rows,
                                          run_lm_eval)
from wikigpt_core.eval.perplexity import perplexity
from wikigpt_core.eval.report import (CHECKPOINTS, build_report, cost_rows, flat_stats, render_html,
                                      render_markdown, render_table, tables)
from wikigpt_core.llm.budget import FailureBudget, request_cap
from wikigpt_core.llm.client import make_client
from wikigpt_core.llm.judge import Judge, judge_text
from wikigpt_core.llm.labels import is_rule_system, who


def _perplexities(models: dict, val_bin: Path, cfg: EvalConfig) -> dict[str, float]:
    return {c: perplexity(m, val_bin, n_windows=cfg.ppl_batches * cfg.ppl_batch_size,
                          batch_size=cfg.ppl_batch_size) for c, m in models.items()}


def _greedy_replies(models: dict, tok, prompts: list[str], cfg: EvalConfig) -> dict[str, dict[str, Reply]]:
    """{checkpoint: {prompt: reply}}: every prompt decoded once per checkpoint, all together."""
    convs = [[{"role": "user", "content": p}] for p in prompts]
    replies = {}
    for c, m in models.items():
        gen = generate_replies(m, tok, convs, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.harness_temperature, top_p=cfg.top_p, seed=cfg.seed)
        replies[c] = {p: r for p, (r,) in zip(prompts, gen)}
    return replies


def run_eval(cfg: EvalConfig, teacher_cfg: TeacherConfig, checkpoints: dict[str, Path], shards_dir: Path,
             sft_dataset_dir: Path, tokenizer_dir: Path, out: Path, upstream: dict[str, dict] | None = None,
             cache_dir: Path | None = None, *, precision: str = "auto") -> StageResult:
    """The judge is the teacher `teacher_cfg` names (a launched endpoint arrives as its
    `base_url`). The judge passes stop with TeacherBudgetError, publishing nothing, when too many verdicts fail.
    `precision` is the model passes' autocast (`inference_runtime`): "auto" is bf16 on a GPU."""
    from wikigpt_core.model_io import load_model
    from wikigpt_core.tokenizer import WikiTokenizer
    from wikigpt_core.train.stage import training_log

    missing = [c for c in CHECKPOINTS if c not in checkpoints]
    if missing:
        raise ValueError(f"checkpoints must name {CHECKPOINTS}; missing {missing}")
    t0 = time.perf_counter()
    tok = WikiTokenizer.load(tokenizer_dir)
    rt = inference_runtime(precision)
    models = {c: load_model(checkpoints[c], device=rt.device) for c in CHECKPOINTS}
    with rt.autocast():
        ppl = _perplexities(models, Path(shards_dir) / "val.bin", cfg)

    heldout = read_jsonl(Path(sft_dataset_dir) / "heldout.jsonl")
    random.Random(cfg.seed).shuffle(heldout)  # a task mix in the first pairwise_n, whatever the file order
    harness_rows = [r for r in heldout if r.get("task") == "qa" and r.get("answer")][:cfg.harness_n]
    pair_rows = heldout[:cfg.pairwise_n]
    # Every distinct prompt is decoded once per checkpoint and shared by harness and pairwise.
    prompts = list(dict.fromkeys(r["messages"][0]["content"] for r in harness_rows + pair_rows))
    with rt.autocast():
        replies = _greedy_replies(models, tok, prompts, cfg)

    harness = {}
    for c in CHECKPOINTS:
        recs = [HarnessRecord(replies[c][r["messages"][0]["content"]].text, r["answer"],
                              replies[c][r["messages"][0]["content"]].stopped) for r in harness_rows]
        harness[c] = score_harness(recs)

    # Two pairwise passes, each pair judged in both orders: 4 requests per prompt planned.
    planned = 4 * len(pair_rows)
    client = make_client(teacher_cfg, cache_dir, max_requests=request_cap(teacher_cfg, planned))
    budget = FailureBudget("eval_report", teacher_cfg, client, asked=planned, unit="verdicts")
    judge = Judge(client, budget)
    pairwise = {}
    for name, cand, base in (("sft_vs_base", "sft", "base"), ("dpo_vs_sft", "dpo", "sft")):
        cases = []
        for r in pair_rows:
            q = r["messages"][0]["content"]
            ref = r.get("answer") if r.get("task") == "qa" else r["messages"][1]["content"]
            cases.append(PairCase(q, judge_text(replies[cand][q]), judge_text(replies[base][q]), ref or ""))
        pairwise[name] = win_tie_loss(judge_debiased(judge, cases))

    with rt.autocast():
        gallery = run_gallery(models, tok, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, seed=cfg.seed)

    report = build_report(ppl, pairwise, harness, gallery)
    judge_label = "rule system, not a model" if is_rule_system(teacher_cfg.backend) else judge.client.model
    logs = {c: read_log(training_log(checkpoints[c])) for c in CHECKPOINTS}
    charts = report_charts(report, logs, judge_label)
    chart_paths = {f"{CHART_DIR}/{name}": CHART_CAPTIONS[name] for name in charts}
    if cfg.lm_eval:
        bench = run_lm_eval({c: Path(checkpoints[c]) for c in CHECKPOINTS}, Path(tokenizer_dir),
                            list(cfg.lm_eval_tasks), limit=cfg.lm_eval_limit,
                            include_path=cfg.lm_eval_include_path or None,
                            batch_size=cfg.lm_eval_batch_size, device=str(rt.device),
                            autocast_dtype=rt.autocast_dtype)
    else:
        bench = LmEvalOutcome("off")
    # Only upstream figures go into the files: this run's own time would change the content hash
    # (the DataVersion) on every rerun; it is reported in the stats instead.
    tabs = tables(report, cost_rows(upstream))
    seconds = time.perf_counter() - t0
    notes = {"judge": f"{teacher_cfg.backend}:{judge.client.model}",
             "judge_who": who(teacher_cfg.backend, judge.client.model),
             "judge_is_rules": is_rule_system(teacher_cfg.backend), "heldout": len(heldout),
             "harness_n": len(harness_rows), "pairwise_n": len(pair_rows),
             "harness_temperature": cfg.harness_temperature, "max_new_tokens": cfg.max_new_tokens}
    stopped = {(g["id"], c): g[f"{c}_stopped"] for g in gallery for c in CHECKPOINTS}
    config = {"eval": vars(cfg), "teacher": vars(teacher_cfg)}
    inputs = {c: str(p) for c, p in checkpoints.items()}
    with ArtifactWriter(out, stage="eval_report", config=config, inputs=inputs) as w:
        (w.dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        results_only = {k: v for k, v in tabs.items() if k != "cost"}
        md = render_markdown(report, results_only, notes, stopped, charts=chart_paths,
                             benchmarks=lm_eval_markdown(bench, render_table))
        (w.dir / "report.md").write_text(md)
        (w.dir / CHART_DIR).mkdir()
        for name, png in charts.items():
            (w.dir / CHART_DIR / name).write_bytes(png)
        (w.dir / "report.html").write_text(render_html(md, {f"{CHART_DIR}/{n}": b for n, b in charts.items()}))
        (w.dir / LM_EVAL_FILE).write_text(json.dumps(bench.to_json(), indent=2) + "\n")
        (w.run_dir / "costs.md").write_text("# Cost and time (from upstream metadata)\n\n"
                                            + render_table(tabs["cost"]))
        w.stats.update(flat_stats(report))
        w.stats.update({"harness_n": len(harness_rows), "pairwise_prompts": len(pair_rows),
                        "judge_backend": teacher_cfg.backend, "judge_model": judge.client.model,
                        "eval_seconds": round(seconds, 3), "eval_device": rt.device.type,
                        "eval_autocast": autocast_label(rt),
                        **judge.usage.as_stats("judge_"), **budget.stats("judge_")})
        # Lists of flat rows: the pipeline renders each as a Dagster table.
        w.stats.update({f"{name}_table": rows for name, rows in tabs.items()})
        w.stats["lm_eval_status"] = bench.status
        w.stats["charts"] = len(charts)
        if bench.status == "ok":
            w.stats["lm_eval_table"] = lm_eval_rows(bench)
    return w.result
