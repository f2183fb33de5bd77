"""The local ComputeLauncher with nproc_per_node = 2: the real stage under torchrun (two gloo CPU
processes) through Dagster Pipes, as the base_checkpoint asset.

Only rank 0 speaks Pipes and writes: the asset gets one materialization, each step's metrics
arrive once, one checkpoint key dir exists. And DDP trains what one process trains on the same
global batch (grad_accum = 4 micro-batches over both ranks): the published weights equal a
one-process run of the same spec within the tolerance of tests/core/test_train_ddp.py.
"""

import sys
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors.torch import load_file

from tests.core.train_support import make_shards, make_tokenizer, micro_toml, stage_spec
from wikigpt_core.artifacts import content_hash, read_manifest
from wikigpt_core.run import run_spec
from wikigpt_core.spec import StageSpec
from wikigpt_pipeline.launchers import ComputeLauncher
from wikigpt_pipeline.launchers.command import stage_command

PRETRAIN = dict(max_steps=3, batch_size=4, grad_accum=4, lr=3e-3, warmup_steps=1, eval_interval=3,
                eval_iters=1, sample_interval=1000, ckpt_interval=2, log_interval=1, compile="off",
                precision="fp32")


class _Quiet:
    """A reporter for the in-process reference run (prints nothing, keeps nothing)."""

    def metrics(self, metrics, step):
        pass

    def log(self, message):
        pass

    def report(self, result):
        pass


def test_stage_command_is_torchrun_only_for_several_processes():
    one = stage_command(["-m", "wikigpt_core.run", "base_checkpoint", "--spec", "s.json"], 1)
    assert one == [sys.executable, "-m", "wikigpt_core.run", "base_checkpoint", "--spec", "s.json"]
    four = stage_command(["-m", "wikigpt_core.run", "base_checkpoint"], 4)
    assert four[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert four[5:] == ["-m", "wikigpt_core.run", "base_checkpoint"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="nproc_per_node"):
            stage_command(["-m", "x"], bad)


def test_two_process_pretraining_through_pipes_matches_one_process(tmp_path, monkeypatch):
    tok = make_tokenizer(tmp_path / "tokenizer")
    shards = make_shards(tmp_path / "token_shards", tok)
    toml = micro_toml(tok.vocab_size, **PRETRAIN)
    inputs = {"token_shards": shards, "tokenizer": tmp_path / "tokenizer"}
    out, work = tmp_path / "base_checkpoint", tmp_path / "_work"
    spec = stage_spec(tmp_path / "specs", "base_checkpoint", toml, inputs, out, work)

    @dg.asset(name="base_checkpoint")
    def base_checkpoint(context: dg.AssetExecutionContext, launcher: ComputeLauncher):
        return launcher.run_stage(context, "base_checkpoint", ["--spec", str(spec)], [out])

    instance = dg.DagsterInstance.ephemeral()
    launcher = ComputeLauncher(nproc_per_node=2, env={"WANDB_MODE": "disabled", "WIKIGPT_DEVICE": "cpu",
                                                      "OMP_NUM_THREADS": "1"})
    res = dg.materialize([base_checkpoint], resources={"launcher": launcher}, instance=instance)
    assert res.success

    # Rank 0 alone reported: one materialization, one line per step, the result once.
    mats = res.asset_materializations_for_node("base_checkpoint")
    assert len(mats) == 1
    md = {k: v.value for k, v in mats[0].metadata.items()}
    assert md["processes"] == 2 and md["backend"] == "local"
    assert md["steps"] == 3 and md["last_step"] == 3
    logs = [r.user_message for r in instance.all_logs(res.run_id)]
    for step in (1, 2, 3):
        lines = [m for m in logs if m.startswith(f"[base_checkpoint] step {step}:") and "loss/train=" in m]
        assert len(lines) == 1, (step, lines)
    assert mats[0].tags["dagster/data_version"] == read_manifest(out)["content_hash"] == content_hash(out)
    assert len([p for p in work.iterdir() if len(p.name) == 16]) <= 1  # rank 1 kept no checkpoints

    # The same spec in one process (here, in-process): the same global batch, the same weights.
    monkeypatch.setenv("WIKIGPT_DEVICE", "cpu")
    single_out, single_work = tmp_path / "single", tmp_path / "_work_single"
    single_spec = stage_spec(tmp_path / "specs1", "base_checkpoint", toml, inputs, single_out, single_work)
    single = run_spec(StageSpec.read(single_spec), reporter=_Quiet())
    a = load_file(str(single_out / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"1 vs 2 processes: max |weight delta| {worst:.3g}")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    assert md["tokens_trained"] == single.stats["tokens_trained"] == 3 * 4 * 4 * 64  # steps x accum x B x T
    assert abs(md["train_loss"] - single.stats["train_loss"]) < 1e-4
