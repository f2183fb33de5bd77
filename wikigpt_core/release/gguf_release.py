"""The `gguf_release` stage: the release as GGUF files for llama.cpp and Ollama.

- f16 and Q8_0 come from the project's exporter (`gguf_export`, the `gguf` package);
- Q4_K_M comes from llama.cpp's own quantizer, run on the f16 file through llama-cpp-python.
  K-quants work in blocks of 256 weights along a row: a tensor whose rows are shorter (every
  tensor of the tiny profile, width 128) gets llama.cpp's fallback type instead (Q5_0 for
  Q4_K, Q8_0 for Q6_K). README.md lists the tensor types each file really holds.

Each file is then measured with llama.cpp: perplexity on the same val-shard windows as the
release's own weights, a greedy chat reply, and CPU decode speed. Measurements vary with the
machine, so they are the run record (`run/measurements.json`, `run/quantization.md`); the
hashed content is the files, the Modelfile and the README.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from wikigpt_core.artifacts import ArtifactWriter, StageResult
from wikigpt_core.config import GGUFConfig
from wikigpt_core.release.llamacpp import llamacpp_python, run_worker

log = logging.getLogger(__name__)

EXPORTED = {"f16": "f16", "Q8_0": "q8_0"}
"""Written by the project's exporter: label -> gguf_export type."""
QUANTIZED = {"Q4_K_M": "f16"}
"""Written by llama.cpp's quantizer: label -> the label of the file it quantizes."""
LABELS = (*EXPORTED, *QUANTIZED)
BASELINE = "f16"
"""The file the others' perplexity is compared with."""
MODELFILE_GGUF = "Q4_K_M"
"""The file the Modelfile loads (the usual default for local models)."""
CHAT_PROBE = [{"role": "user", "content": "What is Wikipedia?"}]
CHAT_PROBE_TOKENS = 32
MEASUREMENTS = "measurements.json"


def gguf_file(repo_name: str, label: str) -> str:
    return f"{repo_name}-{label}.gguf"


def release_repo_name(release: Path) -> str:
    manifest = Path(release) / "run_manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing; point at an hf_release folder "
                                "(materialize the `hf_release` asset first)")
    return json.loads(manifest.read_text(encoding="utf-8"))["release_config"]["repo_name"]


def require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError("gguf_release writes GGUF with the `gguf` package: "
                          "pip install -e '.[gguf]'") from None


def write_files(release: Path, out: Path, repo_name: str, threads: int, python: str) -> dict[str, Path]:
    """Every GGUF file of the release, written under `out`."""
    from wikigpt_core.release.gguf_export import export_gguf

    paths = {label: Path(out) / gguf_file(repo_name, label) for label in LABELS}
    for label, qtype in EXPORTED.items():
        export_gguf(release, paths[label], qtype)
    for label, source in QUANTIZED.items():
        run_worker({"op": "quantize", "src": str(paths[source]), "dst": str(paths[label]),
                    "ftype": label, "threads": threads}, python)
    return paths


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds, e.g. {"Q5_0": 28, "F32": 9}."""
    import gguf

    return dict(sorted(Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors).items()))


def eval_windows_ids(val_bin: Path, block_size: int, n_windows: int) -> list[list[int]]:
    """The val-shard windows (block_size + 1 tokens each) the core's perplexity uses."""
    from wikigpt_core.eval.perplexity import eval_windows

    data = np.memmap(val_bin, dtype=np.uint16, mode="r")
    return [data[s:s + block_size + 1].astype(np.int64).tolist()
            for s in eval_windows(val_bin, block_size, n_windows)]


def release_perplexity(release: Path, val_bin: Path, n_windows: int) -> float:
    """The release's own safetensors, in PyTorch, on the same windows."""
    from wikigpt_core.eval.perplexity import perplexity
    from wikigpt_core.release.hf_export import load_release_model

    return perplexity(load_release_model(release), val_bin, n_windows=n_windows)


def measure_file(path: Path, windows: list[list[int]], block_size: int, decode_prompt: list[int],
                 cfg: GGUFConfig, python: str) -> dict[str, Any]:
    decode = min(cfg.decode_tokens, block_size - len(decode_prompt) - 2)
    return run_worker({"op": "measure", "model": str(path), "n_ctx": block_size,
                       "threads": cfg.threads, "windows": windows, "messages": CHAT_PROBE,
                       "max_tokens": CHAT_PROBE_TOKENS, "decode_prompt": decode_prompt,
                       "decode_tokens": decode}, python)


def answer_chat(path: Path, python: str | None = None, n_ctx: int = 256) -> dict[str, Any]:
    """llama.cpp loads the file and answers the chat probe greedily (nothing else measured)."""
    return run_worker({"op": "chat", "model": str(path), "n_ctx": n_ctx, "threads": 0,
                       "messages": CHAT_PROBE, "max_tokens": CHAT_PROBE_TOKENS}, python)


def quantization_table(rows: dict[str, dict[str, Any]], reference_ppl: float) -> str:
    """The measured table, markdown: one row per file plus the release's own weights."""
    base = rows[BASELINE]["perplexity"]
    lines = ["| file | tensor types | size (MB) | val perplexity (llama.cpp) | vs f16 | decode tok/s (CPU) |",
             "|---|---|---:|---:|---:|---:|"]
    for label, r in rows.items():
        types = ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items())
        lines.append(f"| {label} | {types} | {r['bytes'] / 1e6:.2f} | {r['perplexity']:.4f} | "
                     f"{r['perplexity'] / base - 1:+.2%} | {r['decode_tok_s']:.0f} |")
    lines.append(f"| release safetensors (PyTorch, float32) | | | {reference_ppl:.4f} | "
                 f"{reference_ppl / base - 1:+.2%} | |")
    return "\n".join(lines) + "\n"


def run_gguf_release(cfg: GGUFConfig, release: Path, shards: Path, out: Path,
                     input_hashes: dict[str, str] | None = None) -> StageResult:
    """Write the GGUF folder at `out` (atomically), measure each file, and publish it to
    `<HF_REPO_ID>-GGUF` when HF_REPO_ID and HF_TOKEN are set."""
    from wikigpt_core.chat import render_prompt
    from wikigpt_core.release.model_card import render_gguf_card
    from wikigpt_core.release.modelfile import write_modelfile
    from wikigpt_core.release.publish import gguf_target, hub_target_from_env, publish
    from wikigpt_core.tokenizer import WikiTokenizer

    require_gguf_package()
    python = llamacpp_python()  # fail before any work when llama.cpp is not there
    release, shards = Path(release), Path(shards)
    repo_name = release_repo_name(release)
    block = int(json.loads((release / "config.json").read_text())["max_position_embeddings"])
    target = hub_target_from_env()
    with ArtifactWriter(out, stage="gguf_release", config=dataclasses.asdict(cfg),
                        inputs=input_hashes or {}) as w:
        t0 = time.monotonic()
        paths = write_files(release, w.dir, repo_name, cfg.threads, python)
        windows = eval_windows_ids(shards / "val.bin", block, cfg.ppl_windows)
        prompt = render_prompt(CHAT_PROBE, WikiTokenizer.load(release))
        rows = {}
        for label, path in paths.items():
            measured = measure_file(path, windows, block, prompt, cfg, python)
            rows[label] = {"file": path.name, "bytes": path.stat().st_size,
                           "tensor_types": tensor_types(path), **measured}
        reference = release_perplexity(release, shards / "val.bin", cfg.ppl_windows)
        write_modelfile(release, w.dir, paths[MODELFILE_GGUF].name)
        hub_id = gguf_target(target).repo_id if target else ""
        (w.dir / "README.md").write_text(
            render_gguf_card(repo_name, {k: {"file": r["file"], "bytes": r["bytes"],
                                             "tensor_types": r["tensor_types"]} for k, r in rows.items()},
                             source_repo=target.repo_id if target else "", hub_id=hub_id),
            encoding="utf-8")
        (w.run_dir / MEASUREMENTS).write_text(json.dumps(
            {"files": rows, "release_perplexity": reference, "windows": len(windows),
             "block_size": block}, indent=2) + "\n", encoding="utf-8")
        table = quantization_table(rows, reference)
        (w.run_dir / "quantization.md").write_text(table, encoding="utf-8")
        w.stats.update(_stats(rows, reference, time.monotonic() - t0), table=table,
                       published=False, repo_id=hub_id or f"{repo_name}-GGUF")
        if target is not None:
            publish(w.dir, gguf_target(target), commit_message="WikiGPT GGUF release",
                    smoke=lambda copy: answer_chat(copy / gguf_file(repo_name, MODELFILE_GGUF),
                                                   python, block)["content"])
            w.stats["published"] = True
        else:
            log.info("HF_REPO_ID/HF_TOKEN not both set: GGUF files kept local at %s", out)
    assert w.result is not None
    return w.result


def _stats(rows: dict[str, dict[str, Any]], reference: float, seconds: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"release_ppl": reference, "seconds": round(seconds, 1)}
    for label, r in rows.items():
        key = label.lower()
        stats.update({f"{key}_ppl": r["perplexity"], f"{key}_bytes": r["bytes"],
                      f"{key}_decode_tok_s": round(r["decode_tok_s"], 1),
                      f"{key}_ppl_ratio": r["perplexity"] / rows[BASELINE]["perplexity"]})
    return stats
