"""The `hf_release` stage: DPO checkpoint + tokenizer + eval report -> a folder that stock
`transformers` loads as `LlamaForCausalLM`, with a model card filled from lineage."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from wikigpt_core.artifacts import ArtifactWriter, StageResult, content_hash
from wikigpt_core.config import ReleaseConfig
from wikigpt_core.eval.lm_harness import read_lm_eval
from wikigpt_core.model_io import config_to_dict, load_model
from wikigpt_core.release.hf_export import HF_CONFIG, HF_WEIGHTS, llama_config, write_hf_weights
from wikigpt_core.release.hf_tokenizer import write_tokenizer_files
from wikigpt_core.release.model_card import render_gallery, render_model_card
from wikigpt_core.release.publish import hub_target_from_env, publish
from wikigpt_core.release.run_manifest import build_run_manifest

log = logging.getLogger(__name__)
LICENSE_RESOURCE = "LICENSE-cc-by-sa-4.0.txt"
BASE_DATASETS = ["wikimedia/wikipedia"]


def read_report(eval_dir: Path) -> dict[str, Any]:
    path = Path(eval_dir) / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; materialize the `eval_report` asset first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-materialize `eval_report`") from None


def _license_text() -> str:
    return (resources.files("wikigpt_core") / "resources" / LICENSE_RESOURCE).read_text(encoding="utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class LineageMismatch(ValueError):
    """An input directory does not hold the artifact version the lineage describes."""


def verify_inputs(dirs: dict[str, Path], lineage: dict[str, dict]) -> dict[str, str]:
    """Hash each input dir and compare with the content hash its lineage entry records, so the
    card's figures provably describe these exact weights, tokenizer and report."""
    hashes = {}
    for asset, directory in dirs.items():
        actual = content_hash(Path(directory))
        recorded = (lineage.get(asset) or {}).get("content_hash")
        if recorded and recorded != actual:
            raise LineageMismatch(
                f"lineage says {asset} has content hash {recorded[:12]}... but {directory} hashes to "
                f"{actual[:12]}...; the upstream changed since its metadata was recorded. "
                f"Re-materialize {asset} (or pass its current metadata) and retry.")
        hashes[asset] = actual
    return hashes


def run_release(cfg: ReleaseConfig, dpo_dir: Path, tokenizer_dir: Path, eval_dir: Path, out: Path,
                lineage: dict[str, dict], *, profile: str) -> StageResult:
    """Write the release folder at `out` (atomically) and publish it when HF_REPO_ID and
    HF_TOKEN are set. `profile` (the spec's) is recorded in run_manifest.json and in the Hub
    commit message. Stats: params, files, bytes, published, repo_id."""
    verified = verify_inputs({"dpo_checkpoint": dpo_dir, "tokenizer": tokenizer_dir,
                              "eval_report": eval_dir}, lineage)
    model = load_model(dpo_dir)
    report = read_report(eval_dir)
    target = hub_target_from_env()
    inputs = {name: str(entry.get("content_hash", "")) for name, entry in sorted(lineage.items())}
    with ArtifactWriter(out, stage="hf_release", config=dataclasses.asdict(cfg), inputs=inputs) as w:
        tok = write_tokenizer_files(tokenizer_dir, w.dir, model.config.block_size)
        if tok.vocab_size > model.config.vocab_size:
            raise ValueError(f"tokenizer at {tokenizer_dir} has {tok.vocab_size} tokens but the "
                             f"model at {dpo_dir} only {model.config.vocab_size}; they are from different runs")
        hf_cfg = llama_config(model.config, bos_id=tok.doc_id, eos_id=tok.end_id, pad_id=tok.doc_id)
        (w.dir / HF_CONFIG).write_text(json.dumps(hf_cfg, indent=2) + "\n")
        params = write_hf_weights(model, w.dir)
        datasets = BASE_DATASETS + [d for d in (cfg.sft_dataset_repo, cfg.preference_dataset_repo) if d]
        card = render_model_card(
            repo_name=cfg.repo_name, model_cfg=model.config, params=params, lineage=lineage,
            report=report, datasets=datasets, hub_id=target.repo_id if target else "",
            lm_eval=read_lm_eval(eval_dir),
            sft_data_url=f"https://huggingface.co/datasets/{cfg.sft_dataset_repo}" if cfg.sft_dataset_repo else "",
            preference_data_url=(f"https://huggingface.co/datasets/{cfg.preference_dataset_repo}"
                                 if cfg.preference_dataset_repo else ""),
            gguf=cfg.gguf)
        (w.dir / "README.md").write_text(card, encoding="utf-8")
        (w.dir / "gallery.md").write_text(render_gallery(report), encoding="utf-8")
        (w.dir / "LICENSE").write_text(_license_text(), encoding="utf-8")
        manifest = build_run_manifest(profile=profile, release_config=dataclasses.asdict(cfg),
                                      model_config=config_to_dict(model.config), lineage=lineage,
                                      weights_sha256=_sha256(w.dir / HF_WEIGHTS), verified_inputs=verified)
        (w.dir / "run_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        files = [p for p in w.dir.rglob("*") if p.is_file()]
        w.stats.update(params=params, files=len(files), bytes=sum(p.stat().st_size for p in files),
                       published=False, repo_id=target.repo_id if target else cfg.repo_name)
        if target is not None:
            # Upload the finished folder before it is swapped into place: a failed upload fails
            # the stage and leaves the previous release untouched.
            publish(w.dir, target, commit_message=f"WikiGPT release ({profile} profile)")
            w.stats["published"] = True
        else:
            log.info("HF_REPO_ID/HF_TOKEN not both set: release kept local at %s", out)
    assert w.result is not None
    return w.result
