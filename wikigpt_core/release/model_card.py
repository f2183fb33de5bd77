"""The release's README.md (model card; docs/reference.md, "Release layout") and gallery.md,
filled from lineage.

`lineage` maps each upstream asset name to {"stats": {...}, "content_hash": str}. Every number
in the card comes from there or from the eval report; a figure the upstream did not record is
shown as "n/a" rather than invented.
"""
from __future__ import annotations

import math
from typing import Any

import yaml

from wikigpt_core.checkpoints import CHECKPOINT_ASSETS
from wikigpt_core.eval.lm_harness import HUB_DATASETS, TASK_NAMES, LmEvalOutcome, lm_eval_rows
from wikigpt_core.llm.labels import is_rule_system, who
from wikigpt_core.model import GPTConfig
from wikigpt_core.release.publish import gguf_repo_id

NA = "n/a"
CHECKPOINTS = tuple(CHECKPOINT_ASSETS.values())
LICENSE_URL = "https://creativecommons.org/licenses/by-sa/4.0/legalcode"


def stat(lineage: dict[str, dict], asset: str, *keys: str) -> Any:
    """First of `keys` present in the asset's stats, else None."""
    stats = (lineage.get(asset) or {}).get("stats") or {}
    for k in keys:
        if stats.get(k) is not None:
            return stats[k]
    return None


def fmt(value: Any, digits: int = 3) -> str:
    """Thousands separators for ints, a few significant decimals for floats, n/a for None."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1_000:
            return f"{int(value):,}"
        return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def filter_counts(lineage: dict[str, dict]) -> dict[str, Any]:
    """Per-filter drop counts of cleaned_articles, whether nested or flattened into stats."""
    stats = (lineage.get("cleaned_articles") or {}).get("stats") or {}
    nested = stats.get("filter_counts")
    if isinstance(nested, dict):
        return dict(nested)
    return {k: v for k, v in stats.items()
            if isinstance(v, (int, float)) and ("drop" in k or k.startswith("filter"))}


def front_matter(repo_name: str, datasets: list[str], language: str = "en",
                 model_index_: list[dict[str, Any]] | None = None) -> str:
    lines = ["---", "license: cc-by-sa-4.0", "language:", f"- {language}", "library_name: transformers",
             "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {t}" for t in ("llama", "wikipedia", "chat", "dpo", "from-scratch", "wikigpt")]
    lines += ["datasets:"] + [f"- {d}" for d in datasets]
    lines += [f"model_name: {repo_name}"]
    if model_index_:
        lines += [yaml.safe_dump({"model-index": model_index_}, sort_keys=False, allow_unicode=True,
                                 default_flow_style=False, width=1_000).rstrip("\n")]
    lines += ["---", ""]
    return "\n".join(lines)


# What produced each checkpoint; the model-index labels every figure with it.
PRODUCED_BY = {
    "base": "base checkpoint (pretraining)",
    "sft": "SFT checkpoint (supervised fine-tuning of base)",
    "dpo": "DPO checkpoint (preference tuning of SFT; these weights)",
}
TEXT_GENERATION = {"type": "text-generation", "name": "Text Generation"}
# lm-eval tasks that share one Hub dataset are told apart by its configuration.
HUB_CONFIGS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def model_index(repo_name: str, report: dict[str, Any], lm_eval: LmEvalOutcome | None = None,
                dump_date: Any = None) -> list[dict[str, Any]]:
    """The Hugging Face `model-index` (the Hub's eval-results schema: name, results of task,
    dataset and metrics) from the eval report: val perplexity of each checkpoint, and the
    lm-eval task results when the harness ran. Each metric's name says which checkpoint, and
    so which training stage, it measures; values are the report's, unrounded. [] when the
    report holds no figure."""
    results: list[dict[str, Any]] = []
    ppl = report.get("perplexity") or {}
    ppl_metrics = [{"type": "perplexity", "value": float(ppl[c]), "name": f"Perplexity, {label}"}
                   for c, label in PRODUCED_BY.items() if _finite(ppl.get(c))]
    if ppl_metrics:
        held_out = "Wikipedia, held-out val shard" + (f" (dump {dump_date})" if dump_date else "")
        results.append({"task": dict(TEXT_GENERATION),
                        "dataset": {"name": held_out, "type": "wikimedia/wikipedia"},
                        "metrics": ppl_metrics})
    if lm_eval is not None and lm_eval.status == "ok":
        for task in lm_eval.tasks:
            metrics = [{"type": metric, "value": float(value),
                        "name": f"{metric}, {PRODUCED_BY.get(c, c)}"}
                       for c, per_task in lm_eval.results.items()
                       for metric, value in (per_task.get(task) or {}).items() if _finite(value)]
            if not metrics:
                continue
            dataset: dict[str, Any] = {"name": TASK_NAMES.get(task, task),
                                       "type": HUB_DATASETS.get(task, task)}
            if task in HUB_CONFIGS:
                dataset["config"] = HUB_CONFIGS[task]
            dataset["args"] = {"num_few_shot": 0, **({"limit": lm_eval.limit} if lm_eval.limit else {})}
            results.append({"task": dict(TEXT_GENERATION), "dataset": dataset, "metrics": metrics})
    return [{"name": repo_name, "results": results}] if results else []


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(out)


def _eval_section(report: dict[str, Any], lm_eval: LmEvalOutcome | None = None) -> str:
    parts: list[str] = []
    ppl = report.get("perplexity") or {}
    if ppl:
        base = ppl.get("base")
        rows = []
        for name in CHECKPOINT_ASSETS:
            v = ppl.get(name)
            delta = f"{100 * (v - base) / base:+.1f} %" if v is not None and base else NA
            rows.append([name, v, delta])
        parts.append("Perplexity on the held-out Wikipedia val shard:\n\n"
                     + _table(["checkpoint", "perplexity", "Δ vs base"], rows))
    pair = report.get("pairwise") or {}
    if pair:
        rows = [[k.replace("_", " "), _pct(v.get("win")), _pct(v.get("tie")), _pct(v.get("loss")),
                 v.get("n")] for k, v in pair.items()]
        parts.append("Position-debiased pairwise judge (each pair judged in both orders; "
                     "disagreement counts as a tie):\n\n" + _table(["pair", "win", "tie", "loss", "n"], rows))
    harness = report.get("harness") or {}
    if harness:
        metrics = ("exact_match", "contains_answer", "stopped", "length_ok", "distinct3")
        rows = [[name] + [m.get(k) for k in metrics] for name, m in harness.items()]
        parts.append("Judge-free closed-QA harness:\n\n" + _table(["checkpoint", *metrics], rows))
    if lm_eval is not None and lm_eval.status == "ok":
        bench = lm_eval_rows(lm_eval)
        if bench:
            header = list(bench[0])
            limit = f", first {lm_eval.limit} examples per task" if lm_eval.limit else ""
            parts.append(f"Standard benchmarks (EleutherAI lm-evaluation-harness {lm_eval.lm_eval_version}, "
                         f"0-shot{limit}; `gpt2_124m` is OpenAI's GPT-2 124M as published):\n\n"
                         + _table(header, [[r[k] for k in header] for r in bench]))
    return "\n\n".join(parts) if parts else "No evaluation figures were recorded for this run."


def _pct(v: Any) -> str:
    return NA if v is None else f"{100 * float(v):.0f} %"


def _training_rows(lineage: dict[str, dict]) -> list[list[Any]]:
    rows = []
    for ck in CHECKPOINTS:
        seconds = stat(lineage, ck, "seconds", "wall_seconds")
        loss = stat(lineage, ck, "train_loss", "loss", "final_loss")
        val = stat(lineage, ck, "val_loss")
        rows.append([ck.removesuffix("_checkpoint"), stat(lineage, ck, "steps"),
                     stat(lineage, ck, "tokens_trained", "tokens"),
                     None if seconds is None else round(float(seconds) / 3600, 3),
                     stat(lineage, ck, "gpu_hours"), stat(lineage, ck, "cost_usd"), loss, val,
                     hardware_of(lineage, ck)])
    return rows


def hardware_of(lineage: dict[str, dict], asset: str) -> str:
    """Where a training stage ran, as its launcher recorded it."""
    acc = stat(lineage, asset, "accelerators", "device", "hardware", "gpu")
    backend = stat(lineage, asset, "backend")
    if acc and backend:
        return f"{acc} ({backend})"
    return str(acc or backend or NA)


def _dpo_text(lineage: dict[str, dict]) -> str:
    acc = stat(lineage, "dpo_checkpoint", "reward_accuracy")
    margin = stat(lineage, "dpo_checkpoint", "margin")
    beta = stat(lineage, "dpo_checkpoint", "beta")
    if acc is None and margin is None:
        return ""
    return (f"DPO (β = {fmt(beta)}) ended with implicit-reward accuracy {fmt(acc)} and margin "
            f"{fmt(margin)} on its last logged step.\n")


def _maker(lineage: dict[str, dict], asset: str, prefix: str) -> str:
    """Who wrote or judged an asset's data, as its own stats recorded it."""
    backend, model = stat(lineage, asset, f"{prefix}_backend"), stat(lineage, asset, f"{prefix}_model")
    return NA if backend is None and model is None else who(backend, model)


def _data_prose(lineage: dict[str, dict]) -> str:
    backends = {stat(lineage, a, k) for a, k in (("sft_dataset", "teacher_backend"),
                                                  ("preference_dataset", "teacher_backend"),
                                                  ("eval_report", "judge_backend"))}
    text = ("SFT data: grounded QA, summarization and extraction over Wikipedia passages, written by "
            f"{_maker(lineage, 'sft_dataset', 'teacher')}, then quality-filtered. Preference pairs: the "
            f"SFT model's samples ranked by {_maker(lineage, 'preference_dataset', 'teacher')}, plus "
            "false-premise prompts where refusing is preferred. ")
    if any(is_rule_system(b) for b in backends):
        text += ("**A rule system, not a model, wrote and judged data for this run** (where the table "
                 "above says so): the offline rules copy questions, answers, summaries and lists out "
                 "of the passages and score responses by grounding, agreement with a reference, "
                 "stopping, length and repetition. Its judgments are not a language model's opinion.")
    return text + "\n"


def render_model_card(*, repo_name: str, model_cfg: GPTConfig, params: int, lineage: dict[str, dict],
                      report: dict[str, Any], datasets: list[str], sft_data_url: str = "",
                      preference_data_url: str = "", hub_id: str = "",
                      lm_eval: LmEvalOutcome | None = None, gguf: bool = False) -> str:
    """README.md for the Hub repo: front matter (with the eval results as a `model-index`) plus
    the sections listed in docs/reference.md ("Release layout"). `gguf`: the release has GGUF
    files too (the `gguf_release` asset), published as `<hub_id>-GGUF`."""
    L = lineage
    # the language cleaning filtered the corpus for (recorded in its stats; older runs: English)
    language = stat(L, "cleaned_articles", "language") or "en"
    dump_date = stat(L, "wiki_dump", "dump_date")
    pages = stat(L, "wiki_dump", "pages")
    filters = filter_counts(L)
    filter_text = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(filters.items())) or NA
    train_tokens = stat(L, "token_shards", "train_tokens")
    gpu_hours = [stat(L, ck, "gpu_hours") for ck in CHECKPOINTS]
    costs = [stat(L, ck, "cost_usd") for ck in CHECKPOINTS]
    total_gpu_h = sum(float(g) for g in gpu_hours if g is not None) if any(g is not None for g in gpu_hours) else None
    total_cost = sum(float(c) for c in costs if c is not None) if any(c is not None for c in costs) else None
    walls = [r[3] for r in _training_rows(L)]
    total_wall_h = round(sum(w for w in walls if w is not None), 3) if any(w is not None for w in walls) else None
    c = model_cfg
    sections = [
        front_matter(repo_name, datasets, language,
                     model_index(repo_name, report, lm_eval, dump_date=dump_date)),
        f"# {repo_name}\n",
        f"A {fmt(params)}-parameter decoder-only chat model trained from scratch on "
        f"{'English' if language == 'en' else f'`{language}`'} Wikipedia (dump {fmt(dump_date)}), then instruction-tuned (SFT) and preference-tuned "
        "(DPO). Every figure on this card was taken from the run that produced these weights.\n",
        "## Architecture\n",
        _table(["field", "value"], [
            ["type", "decoder-only, Llama-style (loads as `LlamaForCausalLM`)"],
            ["parameters (tied head counted once)", params],
            ["layers / heads / width", f"{c.n_layer} / {c.n_head} / {c.n_embd} (head dim {c.head_dim})"],
            ["vocabulary", c.vocab_size], ["context", f"{fmt(c.block_size)} tokens"],
            ["positions", f"RoPE, θ = {fmt(c.rope_theta)}, rotate-half layout"],
            ["norm", f"RMSNorm (pre-norm, eps {c.norm_eps:g}) and a final RMSNorm"],
            ["MLP", f"SwiGLU, hidden {fmt(c.mlp_hidden)}"],
            ["biases / head", "none / tied to the token embedding"],
        ]),
        "\n## Data provenance\n",
        _table(["step", "figure"], [
            ["Wikipedia dump", f"{fmt(dump_date)} ({fmt(stat(L, 'wiki_dump', 'source'))})"],
            ["dump size / sha1", f"{fmt(stat(L, 'wiki_dump', 'bytes'))} bytes / `{fmt(stat(L, 'wiki_dump', 'sha1'))}`"],
            ["pages in dump", pages],
            ["pages read by extraction", stat(L, "cleaned_articles", "pages_seen")],
            ["articles after extraction + cleaning", stat(L, "cleaned_articles", "rows")],
            ["cleaning drops", filter_text],
            ["exact duplicates removed (SHA-1 of normalized text)", stat(L, "deduped_corpus", "exact_removed")],
            ["near duplicates removed (MinHash-LSH)", stat(L, "deduped_corpus", "fuzzy_removed")],
            ["articles in the corpus", stat(L, "deduped_corpus", "rows")],
            ["tokenizer", f"byte-level BPE, {fmt(c.vocab_size)} tokens incl. 4 reserved specials"],
            ["training tokens", train_tokens],
            ["validation tokens", stat(L, "token_shards", "val_tokens")],
        ]),
        "\nExtraction keeps namespace-0 articles and skips redirects; cleaning strips markup and "
        f"boilerplate and applies length, markup-ratio and language (`{language}`, py3langid) filters.\n",
        "## SFT and DPO data\n",
        _table(["dataset", "figure"], [
            ["SFT examples (train)", stat(L, "sft_dataset", "examples_train")],
            ["SFT examples (held out)", stat(L, "sft_dataset", "examples_heldout")],
            ["task mix (QA / summarize / extract)", " / ".join(
                fmt(stat(L, "sft_dataset", f"examples_{t}")) for t in ("qa", "summarize", "extract"))],
            ["SFT data written by", _maker(L, "sft_dataset", "teacher")],
            ["preference pairs judged by", _maker(L, "preference_dataset", "teacher")],
            ["evaluation judged by", _maker(L, "eval_report", "judge")],
            ["SFT data published at", sft_data_url or "not published (local artifact `sft_dataset`)"],
            ["preference pairs", stat(L, "preference_dataset", "pairs", "rows")],
            ["of which false-premise contrasts", stat(L, "preference_dataset", "pairs_false_premise")],
            ["preference data published at", preference_data_url or "not published (local artifact `preference_dataset`)"],
        ]),
        "\n" + _data_prose(L),
        "## Training\n",
        _table(["stage", "steps", "tokens", "wall hours", "GPU hours", "cost USD", "final loss",
                "val loss", "hardware"], _training_rows(L)),
        f"\nTotal wall time {fmt(total_wall_h)} h; {fmt(total_gpu_h)} GPU hours and {fmt(total_cost)} USD "
        "over the stages whose launcher recorded them (local runs record neither). "
        f"Pretraining base val perplexity: {fmt(stat(L, 'base_checkpoint', 'val_ppl'))}.\n",
        _dpo_text(L),
        "## Evaluation\n",
        _eval_section(report, lm_eval),
        "\nThe 20-prompt gallery (all three checkpoints, temperature 0.7, top-p 0.9, kept verbatim, "
        "failures included) is in `gallery.md`.\n",
        "## Chat format\n",
        "`<|user|>{content}<|end|><|assistant|>{content}<|end|>` per turn; a `system` message is "
        "folded into the first user turn (the model was never trained with a system role); no "
        "newlines around the special tokens; a prompt for generation ends with `<|assistant|>`; "
        "generation stops at `<|end|>`. The tokenizer carries this as its chat template:\n",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained(\"{hub_id or repo_name}\")\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{hub_id or repo_name}\")\n"
        "messages = [{\"role\": \"user\", \"content\": \"Who was Ada Lovelace?\"}]\n"
        "inputs = tok.apply_chat_template(messages, add_generation_prompt=True,\n"
        "                                 return_tensors=\"pt\", return_dict=True)\n"
        "out = model.generate(**inputs, max_new_tokens=128)\n"
        "print(tok.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n```\n",
        "Or serve it: `wikigpt serve --release <this folder>` (SSE `/chat`, OpenAI-compatible "
        "`/v1/chat/completions`, and a web page at `/`).\n",
        _gguf_pointer(repo_name, hub_id) if gguf else "",
        "## Limitations\n",
        "- It hallucinates: names, dates and numbers are often wrong, stated fluently.\n"
        + ("- English only.\n" if language == "en" else
           f"- Pretrained on `{language}` text; the SFT/DPO teacher prompts and the gallery are English.\n")
        + f"- Knowledge is frozen at the dump date ({fmt(dump_date)}).\n"
        f"- {fmt(c.block_size)}-token context; longer conversations lose their oldest exchanges first.\n"
        "- No safety tuning beyond false-premise refusals.\n",
        "## License\n",
        "CC BY-SA 4.0 (see `LICENSE`). The weights are trained on Wikipedia text, whose "
        f"share-alike license carries into them: {LICENSE_URL}. Text from Wikipedia, "
        "the free encyclopedia, by its contributors.\n",
    ]
    return "\n".join(sections)


def _gguf_pointer(repo_name: str, hub_id: str) -> str:
    where = (f"[{gguf_repo_id(hub_id)}](https://huggingface.co/{gguf_repo_id(hub_id)})" if hub_id
             else f"`{gguf_repo_id(repo_name)}` (the `gguf_release` asset; not published)")
    return ("For llama.cpp and Ollama: GGUF files (f16, Q8_0, Q4_K_M) with an Ollama `Modelfile` "
            f"and their measured perplexity are in {where}.\n")


def _gguf_front_matter(repo_name: str, source_repo: str) -> str:
    lines = ["---", "license: cc-by-sa-4.0", "language:", "- en", "pipeline_tag: text-generation"]
    lines += [f"base_model: {source_repo}", "base_model_relation: quantized"] if source_repo else []
    lines += ["tags:"] + [f"- {t}" for t in ("gguf", "llama", "llama.cpp", "ollama", "wikipedia", "wikigpt")]
    lines += [f"model_name: {repo_name}-GGUF", "---", ""]
    return "\n".join(lines)


GGUF_FILE_NOTES = {
    "f16": "the exported weights at 16-bit; the reference for the others",
    "Q8_0": "8-bit, nearly lossless",
    "Q4_K_M": "llama.cpp's 4-bit K-quant mix, the usual choice for local use",
}


def render_gguf_card(repo_name: str, files: dict[str, dict[str, Any]], *, source_repo: str = "",
                     hub_id: str = "") -> str:
    """README.md of the GGUF repo: the files and their tensor types, how to run them in
    Ollama and llama.cpp, and where the measured figures are. `files`: label -> {file,
    bytes, tensor_types}."""
    source = (f"[{source_repo}](https://huggingface.co/{source_repo})" if source_repo
              else f"`{repo_name}` (the `hf_release` asset)")
    rows = [[f"`{f['file']}`", label, f"{f['bytes'] / 1e6:.2f}",
             ", ".join(f"{k} × {v}" for k, v in f["tensor_types"].items()), GGUF_FILE_NOTES.get(label, "")]
            for label, f in files.items()]
    q4 = files.get("Q4_K_M", next(iter(files.values())))["file"]
    repo = hub_id or gguf_repo_id(repo_name)
    return "\n".join([
        _gguf_front_matter(repo_name, source_repo),
        f"# {repo_name}-GGUF\n",
        f"GGUF files of {source} for llama.cpp and Ollama, with the same chat template "
        "and the same weights (quantized).\n",
        _table(["file", "type", "MB", "tensor types", "note"], rows),
        "\nK-quants quantize rows in blocks of 256 weights; llama.cpp gives a tensor whose rows "
        "are shorter a fallback type (Q5_0 for Q4_K, Q8_0 for Q6_K), so a small model's Q4_K_M "
        "holds the types listed above rather than 4-bit K blocks.\n",
        "Validation perplexity (llama.cpp, on the release's own validation windows), size and CPU "
        "decode speed of each file, measured when these files were made: `run/quantization.md`.\n",
        "## Ollama\n",
        "```sh\n"
        f"huggingface-cli download {repo} --local-dir {repo_name}-GGUF\n"
        f"cd {repo_name}-GGUF\n"
        f"ollama create {repo_name} -f Modelfile   # FROM ./{q4}; edit it for another file\n"
        f"ollama run {repo_name} \"Who was Ada Lovelace?\"\n```\n",
        "The `Modelfile` carries the chat template (a system message is folded into the first "
        "user turn, as the model was trained), the stop tokens and the default sampling "
        "parameters.\n",
        "## llama.cpp\n",
        "```sh\n"
        f"llama-server -m {q4} --jinja --port 8080      # OpenAI-compatible /v1/chat/completions\n"
        f"llama-cli -m {q4} --jinja -cnv\n```\n",
        "`--jinja` applies the chat template stored in the file. With llama-cpp-python: "
        f"`python -m llama_cpp.server --model {q4}`.\n",
        "## License\n",
        f"CC BY-SA 4.0, like the weights they are made from: {LICENSE_URL}.\n",
    ])


def render_gallery(report: dict[str, Any]) -> str:
    """gallery.md: every gallery prompt with each checkpoint's answer, verbatim."""
    items = report.get("gallery") or []
    out = ["# Gallery", "",
           "Fixed prompts answered by each checkpoint at temperature 0.7, top-p 0.9. Kept "
           "verbatim, failures included.", ""]
    if not items:
        out.append("The eval report of this run holds no gallery.")
    for item in items:
        out += [f"## {item.get('id', '?')}. {item.get('type', '')}".rstrip(), "",
                "**Prompt:** " + str(item.get("prompt", "")), ""]
        for ck in CHECKPOINT_ASSETS:
            if ck in item:
                text = str(item[ck])
                fence = "`" * max(3, _longest_backtick_run(text) + 1)  # keeps text verbatim
                out += [f"**{ck}:**", "", fence + "text", text, fence, ""]
    return "\n".join(out).rstrip() + "\n"


def _longest_backtick_run(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best
