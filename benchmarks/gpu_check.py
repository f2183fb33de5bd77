"""One call on one GPU (budget: 8 minutes) that writes the GPU figures as JSON:

    python benchmarks/gpu_check.py --out DIR          # on a CUDA machine
    python benchmarks/gpu_check.py --out DIR --dry-run  # anywhere: checks the wiring, no figures

1. `pytest -m gpu` (flash SDPA for causal bf16, fused AdamW, 124m at 16 x 1,024 under 24 GB);
2. 124m pretraining with the real Trainer in the run's own settings (bf16 autocast,
   torch.compile, flash SDPA, fused AdamW): tokens/s, MFU (against the GPU's dense bf16 peak
   from wikigpt_core.train.metrics), peak memory, compile seconds (the first step);
3. packed SFT tokens/s (document-masked blocks) and DPO step time, same settings;
4. whether the tiny release loads and generates in vLLM (chat template and greedy ids against
   the core), when vLLM is installed; otherwise "skipped" with the reason.

Without CUDA it refuses (exit 2), except with --dry-run, which runs each measurement for one
step on CPU with the micro shapes and writes a JSON marked dry_run (its numbers are not
GPU figures). Figures in DIR/gpu_check.json, each with what produced it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480
sys.path.insert(0, str(ROOT))

from wikigpt_core.config import load_settings  # noqa: E402
from wikigpt_core.model import GPT, GPTConfig  # noqa: E402
from wikigpt_core.train.metrics import MetricLogger, flops_per_token, gpu_peak_flops  # noqa: E402
from wikigpt_core.train.objectives import DPOObjective, LMObjective  # noqa: E402
from wikigpt_core.train.runtime import Runtime  # noqa: E402
from wikigpt_core.train.trainer import Trainer  # noqa: E402


class NoCheckpoints:
    def due(self, step, final):
        return False

    def load_latest(self, model, optimizer):
        return None


def random_lm(vocab: int, batch: int, seq: int, docs: int = 0):
    """Deterministic random micro-batches; with docs > 0, `docs` packed segments per row."""
    class Data:
        def batch(self, step, micro):
            g = torch.Generator().manual_seed(step * 1000 + micro)
            x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
            b = {"idx": x[:, :-1], "targets": x[:, 1:]}
            if docs:
                b["doc_ids"] = (torch.arange(seq) * docs // seq).expand(batch, seq).contiguous()
            return b
    return Data()


def random_pairs(vocab: int, batch: int, seq: int):
    class Data:
        def batch(self, step, micro):
            g = torch.Generator().manual_seed(step * 1000 + micro)
            out = {}
            for side in ("chosen", "rejected"):
                idx = torch.randint(0, vocab, (batch, seq), generator=g)
                tgt = idx.roll(-1, 1)
                tgt[:, : seq // 2] = -100  # prompt positions
                out[f"{side}_idx"], out[f"{side}_targets"] = idx, tgt
                out[f"{side}_len"] = torch.full((batch,), seq)
            return out
    return Data()


def timed(trainer: Trainer, steps: int, device: torch.device) -> tuple[float, float]:
    """(first step seconds, mean seconds of the next `steps`)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train_step(0)
    sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        trainer.train_step(s)
    sync()
    return first, (time.perf_counter() - t0) / steps


def measure(model_cfg: GPTConfig, batch: int, seq: int, steps: int, device: torch.device, kind: str,
            compile_mode: str) -> dict:
    cfg = dataclasses.replace(load_settings("124m", env=False).pretrain, batch_size=batch, grad_accum=1,
                              warmup_steps=1, compile=compile_mode, precision="auto" if device.type == "cuda" else "bf16")
    torch.manual_seed(0)
    model = GPT(model_cfg)
    if kind == "dpo":
        ref = GPT(model_cfg).to(device)
        ref.load_state_dict(model.state_dict())
        objective, data = DPOObjective(ref), random_pairs(model_cfg.vocab_size, batch, seq)
        tokens = lambda b: 2 * batch * seq  # noqa: E731
    else:
        objective = LMObjective()
        data = random_lm(model_cfg.vocab_size, batch, seq, docs=8 if kind == "sft" else 0)
        tokens = None
    trainer = Trainer(model, objective, data, cfg, Runtime(device), max_steps=10_000, tokens_per_micro=tokens,
                      checkpointer=NoCheckpoints(), logger=MetricLogger(None))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, per_step = timed(trainer, steps, device)
    tok_per_step = (2 if kind == "dpo" else 1) * batch * seq
    row = {"kind": kind, "batch": batch, "seq": seq, "steps_timed": steps, "compiled": trainer.compiled,
           "autocast": str(trainer.runtime.autocast_dtype), "first_step_s": round(first, 2),
           "step_s": round(per_step, 4), "tokens_per_s": round(tok_per_step / per_step, 1)}
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2)
        peak = gpu_peak_flops(torch.cuda.get_device_name(device))
        if peak and kind == "pretrain":
            fpt = flops_per_token(model.num_params(), model_cfg.n_layer, model_cfg.n_embd, seq)
            row["mfu"] = round(row["tokens_per_s"] * fpt / peak, 4)
            row["mfu_goal"] = 0.45
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def pytest_gpu(dry: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/core/test_train_compile_gpu.py", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    return {"command": " ".join(cmd[1:]), "exit_code": done.returncode, "summary": tail[0],
            "passed": done.returncode == 0 and "skipped" not in tail[0]}


VLLM_LOAD = r"""
import json, sys
from vllm import LLM, SamplingParams
release, ids, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = LLM(model=release, tokenizer=release, dtype="bfloat16", enforce_eager=True, max_model_len=256,
          gpu_memory_utilization=0.2, seed=0)
tok = llm.get_tokenizer()
templated = tok.apply_chat_template([{"role": "user", "content": "What is Paris?"}], add_generation_prompt=True,
                                    tokenize=True)
out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True))
print("VLLM_RESULT " + json.dumps({"vllm": __import__("vllm").__version__, "templated": list(templated),
                                   "greedy": list(out[0].outputs[0].token_ids)}))
"""


def vllm_check(workdir: Path, dry: bool, timeout_s: int) -> dict:
    """Does the tiny release (the tiny profile's shape, random weights, the export the release
    stage writes) load and generate in vLLM? Run in a child process with its own CUDA context.
    Compares vLLM's chat template ids with the core's and its greedy ids with the core's."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"status": "skipped", "reason": "vllm is not installed in this environment"}
    if dry:
        return {"status": "skipped", "reason": "dry run: vLLM needs the GPU"}
    from tests.core import test_release_support as support
    from wikigpt_core.chat import render_prompt
    from wikigpt_core.generation import SamplingParams, generate_ids

    tok = support.train_tokenizer(workdir / "tokenizer")
    shape = load_settings("tiny", env=False).model
    torch.manual_seed(0)
    model = GPT(shape).eval()
    release = support.build_release(workdir, model, workdir / "tokenizer", name="vllm")
    prompt = render_prompt([{"role": "user", "content": "What is Paris?"}], tok)
    steps = 8
    with torch.no_grad():  # bf16, as vLLM serves it; near-ties of random weights may still differ
        bf16 = GPT(shape).eval()
        bf16.load_state_dict(model.state_dict())
        bf16.to(torch.bfloat16)
        (reply,) = generate_ids(bf16, [prompt], [SamplingParams(steps, 0.0, 1.0)])
        core = reply.tokens  # ends early only at a stop id; vLLM runs with ignore_eos
    row = {"release": "tiny profile shape " + json.dumps({k: getattr(shape, k) for k in
                                                          ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")})}
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", VLLM_LOAD, str(release), json.dumps(prompt), str(steps)],
                              capture_output=True, text=True, timeout=timeout_s, cwd=workdir)
    except subprocess.TimeoutExpired:
        return row | {"status": "failed", "reason": f"vLLM did not load and generate within {timeout_s} s"}
    row["load_and_generate_s"] = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("VLLM_RESULT ")]
    if done.returncode != 0 or not lines:
        return row | {"status": "failed", "exit_code": done.returncode, "stderr_tail": done.stderr[-1500:]}
    got = json.loads(lines[-1].removeprefix("VLLM_RESULT "))
    return row | {"status": "loaded", "vllm": got["vllm"], "template_ids_match": got["templated"] == prompt,
                  "greedy_ids_match": got["greedy"][:len(core)] == core, "greedy_vllm": got["greedy"], "greedy_core": core}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, micro shapes, one timed step: wiring only")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--vllm-timeout", type=int, default=180, help="seconds the vLLM load check may take")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA GPU here; these figures need one (use --dry-run to check the wiring)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda and not args.dry_run else "cpu")
    if args.dry_run:
        shape = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32, mlp_multiple_of=16)
        batch, seq, steps, compile_mode = 2, 64, 1, "off"
    else:
        shape, batch, seq, steps, compile_mode = load_settings("124m", env=False).model, 16, 1_024, args.steps, "on"
    t0 = time.time()
    report = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "produced_by": "benchmarks/gpu_check.py (real Trainer, random tokens)",
              "pytest_gpu": pytest_gpu(args.dry_run)}
    report["pretrain"] = measure(shape, batch, seq, steps, device, "pretrain", compile_mode)
    report["sft_packed"] = measure(shape, batch, seq, steps, device, "sft", compile_mode)
    report["dpo"] = measure(shape, max(batch // 2, 1), seq, steps, device, "dpo", compile_mode)
    left = BUDGET_S - (time.time() - t0) - 20  # the one call must end within its 8 minutes
    if left < 60:
        report["vllm"] = {"status": "skipped", "reason": f"only {left:.0f} s left of the {BUDGET_S} s budget"}
    else:
        with tempfile.TemporaryDirectory() as work:
            report["vllm"] = vllm_check(Path(work), args.dry_run, int(min(args.vllm_timeout, left)))
    report["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
