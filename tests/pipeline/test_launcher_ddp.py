"""The LocalLauncher with nproc_per_node = 2: the real stage under torchrun (two gloo CPU
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
from wikigpt_pipeline.launchers import LocalLauncher, StageLauncher
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
    def base_checkpoint(context: dg.AssetExecutionContext, launcher: StageLauncher):
        return launcher.run_stage(context, "base_checkpoint", ["--spec", str(spec)], [out])

    instance = dg.DagsterInstance.ephemeral()
    launcher = LocalLauncher(nproc_per_node=2, env={"WANDB_MODE": "disabled", "WIKIGPT_DEVICE": "cpu",
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


# ------------------------------------------------------------------ several GPUs on a rented box

REPO = Path(__file__).resolve().parents[2]


def _run_stage_sh(tmp_path: Path, **env) -> tuple[list[str], str]:
    """sky/run_stage.sh with a `python` on PATH that records its argv (the last call's)."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n')
    (bin_dir / "python").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "WIKIGPT_"))}
    run_env = {**base, "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "ARGV_FILE": str(tmp_path / "argv"), "WIKIGPT_STAGE": "base_checkpoint",
               "WIKIGPT_STAGE_ARGS": "--spec ~/wikigpt_io/in/spec.json", **env}
    done = subprocess.run(["bash", str(REPO / "sky" / "run_stage.sh")], env=run_env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "argv").read_text().split(), done.stdout


STAGE_ARGV = ["-m", "wikigpt_core.run", "base_checkpoint", "--spec"]


def test_run_stage_starts_torchrun_per_gpu_and_across_nodes(tmp_path):
    spec = f"{tmp_path}/wikigpt_io/in/spec.json"
    one, _ = _run_stage_sh(tmp_path, SKYPILOT_NUM_GPUS_PER_NODE="1")
    assert one == [*STAGE_ARGV, spec]
    four, _ = _run_stage_sh(tmp_path, SKYPILOT_NUM_GPUS_PER_NODE="4")
    assert four == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", *STAGE_ARGV, spec]
    # Node 1 of 2: SkyPilot's node rank, the head node (first IP) as rendezvous; no Hub sync there.
    worker, _ = _run_stage_sh(tmp_path, SKYPILOT_NUM_GPUS_PER_NODE="4", SKYPILOT_NUM_NODES="2",
                              SKYPILOT_NODE_RANK="1", SKYPILOT_NODE_IPS="127.0.0.2\n127.0.0.3",
                              WIKIGPT_HUB_REPO="someone/runs")
    assert worker == ["-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--nproc_per_node=4",
                      "--master_addr=127.0.0.2", "--master_port=29500", *STAGE_ARGV, spec]
    single, _ = _run_stage_sh(tmp_path, SKYPILOT_NUM_GPUS_PER_NODE="4", WIKIGPT_TORCHRUN="0")
    assert single == [*STAGE_ARGV, spec]  # a stage that is not a training loop stays one process


def test_run_stage_reports_setup_seconds_on_the_head_node(tmp_path):
    (tmp_path / "wikigpt_io").mkdir()
    (tmp_path / "wikigpt_io" / "setup_seconds").write_text("42\n")
    _, out = _run_stage_sh(tmp_path)
    assert "WIKIGPT_SETUP_SECONDS=42" in out.splitlines()
    _, out = _run_stage_sh(tmp_path, SKYPILOT_NUM_NODES="2", SKYPILOT_NODE_RANK="1",
                           SKYPILOT_NODE_IPS="127.0.0.2\n127.0.0.3")
    assert "WIKIGPT_SETUP_SECONDS" not in out


def _spec_file(tmp_path: Path) -> tuple[Path, Path]:
    import json

    from wikigpt_core.config import load_settings
    from wikigpt_core.stages import STAGES, resolve_spec

    inputs = {}
    for name in STAGES["base_checkpoint"].inputs:
        inputs[name] = tmp_path / name
        inputs[name].mkdir(parents=True)
        (inputs[name] / "manifest.json").write_text(json.dumps({"content_hash": "0" * 64}))
    out = tmp_path / "out" / "base_checkpoint"
    spec = resolve_spec(load_settings("tiny", env=False), "base_checkpoint", inputs, out=out,
                        work=tmp_path / "work").write(tmp_path / "spec.json")
    return spec, out


def test_plan_refuses_several_nodes_on_vast_and_keeps_them_elsewhere(tmp_path):
    from wikigpt_pipeline.launchers.remote_plan import PlanError, plan_task

    spec, out = _spec_file(tmp_path)
    common = dict(sky_dir=REPO / "sky", stage="base_checkpoint", cli_args=["--spec", str(spec)],
                  outputs=[out], workdir=REPO, environ={})
    with pytest.raises(PlanError, match="vast.ai rents single machines.*RTX4090:4"):
        plan_task(**common, num_nodes=2)  # the YAML's infra is vast
    with pytest.raises(PlanError, match="whole number"):
        plan_task(**common, num_nodes=0)
    four = plan_task(**common, accelerators="RTX4090:4")
    assert four.accelerator_count == 4 and four.num_nodes == 1
    aws = plan_task(**common, infra="aws", accelerators="A100:8", num_nodes=2)
    assert aws.config["num_nodes"] == 2 and aws.num_nodes == 2
