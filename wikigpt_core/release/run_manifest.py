"""run_manifest.json: what produced this release (commit, versions, hardware, profile,
every upstream asset with its content hash). Environment variables are never read into it,
so no secret can end up here."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("wikigpt", "torch", "tokenizers", "safetensors", "numpy", "transformers",
            "huggingface_hub", "dagster", "fastapi", "uvicorn")
CHECKPOINT_ASSETS = ("base_checkpoint", "sft_checkpoint", "dpo_checkpoint")


def git_commit(start: Path | None = None) -> dict[str, Any]:
    """HEAD commit of the repository holding this package (None outside a git checkout)."""
    cwd = start or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"commit": head, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    """The machine that assembled the release; training hardware is in each checkpoint entry."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def build_run_manifest(*, profile: str, release_config: dict[str, Any], model_config: dict[str, Any],
                       lineage: dict[str, dict], weights_sha256: str,
                       verified_inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """`verified_inputs`: {asset: content hash computed from the directory actually read}."""
    checkpoints = {}
    for name in CHECKPOINT_ASSETS:
        entry = lineage.get(name) or {}
        checkpoints[name] = {"content_hash": entry.get("content_hash"), "stats": entry.get("stats", {})}
    return {
        "git": git_commit(),
        "packages": package_versions(),
        "hardware": hardware(),
        "profile": profile,
        "release_config": release_config,
        "model_config": model_config,
        "weights_sha256": weights_sha256,
        "checkpoints": checkpoints,
        "verified_inputs": verified_inputs or {},
        "assets": {name: {"content_hash": e.get("content_hash"), "stats": e.get("stats", {})}
                   for name, e in sorted(lineage.items())},
    }
