"""Standard benchmarks through EleutherAI's lm-evaluation-harness, on the HF release format.

Each checkpoint is exported with the release's own HF export (config.json, safetensors,
tokenizer files) into a temp dir, and lm-eval's `hf` model (stock transformers'
LlamaForCausalLM) is evaluated on it, zero-shot. So the numbers are what anyone gets from the
published release with `lm_eval --model hf --model_args pretrained=<repo>`.

The task datasets come from the Hugging Face Hub at run time. Where the Hub (or lm-eval itself)
is not there, the outcome says so and carries no rows; the rest of the report still gets
written, and a non-blocking asset check warns.
"""
from __future__ import annotations

import inspect
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LM_EVAL_FILE = "lm_eval.json"

# Published zero-shot figures of OpenAI's GPT-2 124M (`gpt2` on the Hub) under lm-evaluation-
# harness's `hf` model, the same protocol as here. HellaSwag's are the ones quoted in
# karpathy/build-nanogpt (hellaswag.py: "eleuther harness reports acc 28.92%, acc_norm 31.14%");
# the others come from the same harness run of `pretrained=gpt2`. The GPT-2 paper's own LAMBADA
# numbers (Radford et al. 2019, Table 3: 45.99 % accuracy, perplexity 35.13 for the 117M model)
# use a different protocol (detokenized text, stop-word filtering) and are not comparable.
GPT2_124M_SOURCE = ("EleutherAI lm-evaluation-harness, hf model, pretrained=gpt2, 0-shot "
                    "(HellaSwag as quoted in karpathy/build-nanogpt hellaswag.py)")
GPT2_124M: dict[tuple[str, str], float] = {
    ("hellaswag", "acc"): 0.2892, ("hellaswag", "acc_norm"): 0.3114,
    ("arc_easy", "acc"): 0.4381, ("arc_easy", "acc_norm"): 0.3948,
    ("arc_challenge", "acc"): 0.1903, ("arc_challenge", "acc_norm"): 0.2270,
    ("piqa", "acc"): 0.6289, ("piqa", "acc_norm"): 0.6251,
    ("lambada_openai", "acc"): 0.3256, ("lambada_openai", "perplexity"): 40.05,
    ("winogrande", "acc"): 0.5162,
}
TASK_NAMES = {"hellaswag": "HellaSwag", "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge",
              "piqa": "PIQA", "lambada_openai": "LAMBADA (OpenAI)", "winogrande": "WinoGrande"}
HUB_DATASETS = {"hellaswag": "Rowan/hellaswag", "arc_easy": "allenai/ai2_arc",
                "arc_challenge": "allenai/ai2_arc", "piqa": "baber/piqa",
                "lambada_openai": "EleutherAI/lambada_openai", "winogrande": "allenai/winogrande"}
"""Hub dataset of each standard task, as lm-eval names it; the model card's model-index cites it."""

log = logging.getLogger(__name__)


@dataclass
class LmEvalOutcome:
    """What the harness produced. status: "ok", "off" (not configured) or "unavailable"."""

    status: str
    tasks: list[str] = field(default_factory=list)
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """{checkpoint: {task: {metric: value}}}, stderr entries left out."""
    reason: str = ""
    limit: int | None = None
    lm_eval_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LmEvalOutcome":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def read_lm_eval(eval_dir: Path) -> LmEvalOutcome:
    """The harness outcome stored in an eval_report artifact ("off" when it has none)."""
    path = Path(eval_dir) / LM_EVAL_FILE
    if not path.is_file():
        return LmEvalOutcome("off", reason=f"{LM_EVAL_FILE} not in {eval_dir}")
    return LmEvalOutcome.from_json(json.loads(path.read_text()))


def export_hf(checkpoint_dir: Path, tokenizer_dir: Path, out_dir: Path) -> Path:
    """The checkpoint as a stock-transformers Llama folder (the release's own export)."""
    from wikigpt_core.model_io import load_model
    from wikigpt_core.release.hf_export import HF_CONFIG, llama_config, write_hf_weights
    from wikigpt_core.release.hf_tokenizer import write_tokenizer_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint_dir)
    tok = write_tokenizer_files(tokenizer_dir, out_dir, model.config.block_size)
    cfg = llama_config(model.config, bos_id=tok.doc_id, eos_id=tok.end_id, pad_id=tok.doc_id)
    (out_dir / HF_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    write_hf_weights(model, out_dir)
    return out_dir


def _metrics(task_result: dict[str, Any]) -> dict[str, float]:
    """lm-eval's {"acc,none": v, "acc_stderr,none": s, "alias": ...} -> {"acc": v}."""
    out = {}
    for key, value in task_result.items():
        metric, _, filt = key.partition(",")
        if ("stderr" in metric or metric == "sample_len" or not isinstance(value, (int, float))
                or isinstance(value, bool)):
            continue
        out[metric if filt in ("", "none") else f"{metric}[{filt}]"] = round(float(value), 6)
    return out


def run_lm_eval(checkpoints: dict[str, Path], tokenizer_dir: Path, tasks: list[str], *,
                limit: int | None = None, include_path: str | Path | None = None,
                batch_size: int = 16, device: str = "cpu", autocast_dtype=None) -> LmEvalOutcome:
    """Every task on every checkpoint, zero-shot. Task datasets are loaded once, before any
    model: when that fails (no Hub, or lm-eval missing) the outcome is "unavailable".
    `autocast_dtype` (e.g. torch.bfloat16): float32 weights, forwards under autocast."""
    try:
        import lm_eval
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError as e:
        return LmEvalOutcome("unavailable", tasks=list(tasks), limit=limit,
                             reason=f"lm-eval is not installed ({e}); pip install -e '.[lmeval]'")
    version = getattr(lm_eval, "__version__", "")
    try:
        manager = TaskManager(verbosity="WARNING", include_path=str(include_path) if include_path else None)
        task_dict = get_task_dict(list(tasks), manager)
    except Exception as e:  # noqa: BLE001 - offline Hub, unknown task, broken local task: all reported
        reason = f"could not load the task datasets ({type(e).__name__}: {str(e)[:300]})"
        log.warning("lm-eval skipped: %s", reason)
        return LmEvalOutcome("unavailable", tasks=list(tasks), limit=limit, reason=reason,
                             lm_eval_version=version)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="wikigpt-lm-eval-") as tmp:
        for name, ckpt in checkpoints.items():
            hf_dir = export_hf(ckpt, tokenizer_dir, Path(tmp) / name)
            lm = HFLM(pretrained=str(hf_dir), device=device, batch_size=batch_size, dtype="float32",
                      **_autocast_args(HFLM, autocast_dtype))
            out = evaluate(lm, task_dict, limit=limit, bootstrap_iters=0, log_samples=False,
                           verbosity="WARNING")
            results[name] = {t: _metrics(out["results"][t]) for t in tasks if t in out["results"]}
            del lm
    return LmEvalOutcome("ok", tasks=list(tasks), results=results, limit=limit, lm_eval_version=version)


def _autocast_args(hflm_class, dtype) -> dict[str, Any]:
    """HFLM's autocast argument: lm-eval 0.4.9 and later take `mixed_precision_dtype`; an older
    one has no such argument and evaluates in float32."""
    if dtype is None or "mixed_precision_dtype" not in inspect.signature(hflm_class.__init__).parameters:
        return {}
    return {"mixed_precision_dtype": dtype}


def lm_eval_rows(outcome: LmEvalOutcome) -> list[dict[str, Any]]:
    """One row per (task, metric): each checkpoint's value beside GPT-2 124M's published one."""
    rows = []
    checkpoints = list(outcome.results)
    for task in outcome.tasks:
        metrics = list(dict.fromkeys(m for c in checkpoints for m in outcome.results[c].get(task, {})))
        for metric in metrics:
            row: dict[str, Any] = {"task": TASK_NAMES.get(task, task), "metric": metric}
            for c in checkpoints:
                row[c] = outcome.results[c].get(task, {}).get(metric)
            row["gpt2_124m"] = GPT2_124M.get((task, metric))
            rows.append(row)
    return rows


def lm_eval_markdown(outcome: LmEvalOutcome, render_table) -> str:
    """The report section: the table, or one line saying why there is none."""
    head = "\n## Standard benchmarks (EleutherAI lm-evaluation-harness, 0-shot, HF release format)\n\n"
    if outcome.status == "off":
        return head + "Not run for this profile (set `[eval] lm_eval = true` to run it).\n"
    if outcome.status != "ok":
        return head + f"**Not available in this run:** {outcome.reason}.\n"
    limit = f" on the first {outcome.limit} examples of each task" if outcome.limit else ""
    return (head + f"lm-eval {outcome.lm_eval_version}{limit}. The `gpt2_124m` column is OpenAI's "
            f"GPT-2 124M as published ({GPT2_124M_SOURCE}); `–` where no published figure exists "
            "for that task and metric.\n\n" + render_table(lm_eval_rows(outcome)))
