"""Save and load a GPT as `model.safetensors` + `config.json` (no pickle anywhere).

safetensors forbids two names sharing storage, so the tied LM head is stored once, under
`tok_emb.weight`; loading re-ties it. `config.json` holds the GPTConfig init fields.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wikigpt_core.model import GPT, GPTConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_TIED = "lm_head.weight"


class CheckpointError(ValueError):
    """A model directory that is missing files or does not match its config."""


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside a torch.compile and/or DistributedDataParallel wrapper."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model  # type: ignore[return-value]


def config_to_dict(config: GPTConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


def weights_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the tied head dropped, as contiguous CPU tensors."""
    sd = unwrap(model).state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items() if k != _TIED}


def save_model(model: torch.nn.Module, directory: str | Path) -> None:
    """Write model.safetensors and config.json into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gpt = unwrap(model)
    save_file(weights_dict(gpt), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_dict(gpt.config), indent=2))


def read_config(directory: str | Path) -> GPTConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing; {directory} is not a saved WikiGPT model")
    fields = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(GPTConfig) if f.init}
    unknown = set(fields) - known
    if unknown:
        raise CheckpointError(f"{path} has unknown GPTConfig fields {sorted(unknown)}")
    return GPTConfig(**fields)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Build the GPT described by config.json, load its weights, return it in eval mode."""
    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing; re-materialize the checkpoint asset")
    model = GPT(config)
    load_weights(model, load_file(str(weights)), source=str(weights))
    return model.to(device).eval()


def load_weights(model: GPT, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load a (tied-head-free) state dict strictly, naming any mismatch."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source} does not match the config: {e}") from None
    missing = [k for k in missing if k != _TIED]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    assert model.lm_head.weight is model.tok_emb.weight
