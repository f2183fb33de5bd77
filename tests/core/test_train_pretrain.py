"""Pretraining: memmap shards with deterministic seeded sampling, the optimizer's weight-decay
groups, the run_pretrain stage (stats, artifact, metrics callback, offline W&B) and its errors."""
from __future__ import annotations

import json
from pathlib import Path
import math

import numpy as np
import pytest
import torch

from tests.core.train_support import make_shards, make_tokenizer, micro_model, micro_train, single_thread  # noqa: F401
from wikigpt_core.model import GPT
from wikigpt_core.model_io import load_model
from wikigpt_core.pretrain import run_pretrain
from wikigpt_core.train.data import DataError, TokenShards
from wikigpt_core.train.runtime import Runtime, build_optimizer, param_groups

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tok = make_tokenizer(root / "tok")
    return make_shards(root / "shards", tok), tok


def test_shards_are_memmapped_and_sampling_is_deterministic(shards):
    shards_dir, _ = shards
    a = TokenShards(shards_dir / "train.bin", 16, 3, seed=1)
    assert isinstance(a.tokens, np.memmap)  # never loaded whole
    b1, b2 = a.batch(5, 1), TokenShards(shards_dir / "train.bin", 16, 3, seed=1).batch(5, 1)
    assert torch.equal(b1["idx"], b2["idx"])
    assert not torch.equal(a.batch(5, 0)["idx"], b1["idx"])  # micro-batches differ
    assert not torch.equal(TokenShards(shards_dir / "train.bin", 16, 3, seed=2).batch(5, 1)["idx"], b1["idx"])
    assert torch.equal(b1["idx"][:, 1:], b1["targets"][:, :-1])  # targets are the next tokens
    raw = np.fromfile(shards_dir / "train.bin", dtype=np.uint16)
    row = b1["idx"][0].numpy()
    starts = [i for i in range(len(raw) - 16) if np.array_equal(raw[i:i + 16], row)]
    assert starts  # every window is a real slice of the shard


def test_bad_shards_raise_typed_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        TokenShards(tmp_path / "nope.bin", 8, 1, 0)
    np.zeros(5, dtype=np.uint16).tofile(tmp_path / "small.bin")
    with pytest.raises(DataError, match="fewer than seq_len"):
        TokenShards(tmp_path / "small.bin", 8, 1, 0)
    with pytest.raises(DataError, match="meta.json is missing"):
        run_pretrain(micro_model(), micro_train(), tmp_path, tmp_path / "o", tmp_path / "w")


def test_weight_decay_groups():
    model = GPT(micro_model())
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.tok_emb.weight for p in decay["params"])  # tied embedding/head decayed once
    assert len(no_decay["params"]) == 2 * model.config.n_layer + 1  # every RMSNorm gain
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()
    opt = build_optimizer(model, micro_train(beta1=0.9, beta2=0.95), Runtime(torch.device("cpu")))
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_run_pretrain_stage(tmp_path, shards, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    shards_dir, tok = shards
    seen = []
    res = run_pretrain(micro_model(tok.vocab_size), micro_train(max_steps=6, grad_accum=1), shards_dir,
                       tmp_path / "base", tmp_path / "work", on_metrics=lambda m, s: seen.append((s, m)),
                       tokenizer_dir=shards_dir.parent / "tok")
    st = res.stats
    for key in ("steps", "tokens_trained", "initial_loss", "train_loss", "val_loss", "val_ppl",
                "tokens_per_s", "seconds", "params"):
        assert isinstance(st[key], (int, float)), key
    assert st["steps"] == 6 and st["tokens_trained"] == 6 * 4 * 64
    assert abs(st["initial_loss"] - math.log(tok.vocab_size)) < 0.5  # untrained: near uniform
    assert st["train_loss"] < st["initial_loss"]
    assert st["val_ppl"] == pytest.approx(math.exp(st["val_loss"]))
    assert st["params"] == load_model(res.path).num_params()
    assert (st["compile_mode"], st["attention"], st["compiled"]) == ("default", "auto", False)  # kernel settings recorded
    # The W&B run (offline dir here) is in the manifest stats, not in the hashed metrics.json.
    assert Path(st["wandb_run"]).name.startswith("offline-run-") and Path(st["wandb_run"]).is_dir()
    assert json.loads((res.path / "run" / "metrics.json").read_text()) == {k: v for k, v in st.items() if k != "wandb_run"}
    manifest = json.loads((res.path / "manifest.json").read_text())
    assert manifest["stats"]["steps"] == 6 and manifest["content_hash"] == res.content_hash
    keys = set().union(*(m.keys() for _, m in seen))
    assert {"loss/train", "loss/val", "ppl/val", "lr", "grad_norm", "tps", "time/step_ms"} <= keys
    assert all(isinstance(v, (int, float)) for _, m in seen for v in m.values())
    log = [json.loads(l) for l in (res.path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(isinstance(r.get("sample"), str) and r["sample"] for r in log)  # decoded text
    assert list((tmp_path / "work" / "wandb").glob("offline-run-*/run-*.wandb"))  # offline W&B files


def test_flops_and_gpu_peaks():
    from wikigpt_core.train.metrics import flops_per_token, gpu_peak_flops

    # 124m at 1,024 context: 6N + 12 * L * C * T
    assert flops_per_token(110_119_680, 12, 768, 1_024) == 6 * 110_119_680 + 12 * 12 * 768 * 1_024
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H200") == 989e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert gpu_peak_flops("Tesla T4") is None  # unknown: no MFU rather than a wrong one


@pytest.mark.parametrize("stage", ["base_checkpoint", "sft_checkpoint", "dpo_checkpoint"])
def test_stage_cli_writes_a_spec_only_from_its_flags(stage, tmp_path):
    """The one stage CLI resolves a spec for a training stage from flags, not the environment."""
    import json
    import os
    import subprocess
    import sys

    env = os.environ | {"WIKIGPT_PROFILE": "124m", "WIKIGPT_HOME": str(tmp_path)}
    spec = tmp_path / "spec.json"
    from wikigpt_core.stages import STAGES

    ins = list(STAGES[stage].inputs)
    args = [a for name in ins for a in ("--input", f"{name}={tmp_path / name}")]
    for name in ins:
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.bin").write_bytes(name.encode())
    done = subprocess.run([sys.executable, "-m", "wikigpt_core.run", stage, "--write-spec", str(spec), *args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(spec.read_text())
    assert data["profile"] == "tiny" and set(data["inputs"]) == set(ins)  # --profile default, not the env
