"""DDP through torchrun: 2 CPU processes on gloo train the same weights as one process on the
same global batch (grad_accum = 4 counts micro-batches over all ranks: each rank runs 2, the
first under no_sync), only rank 0 writes, and the ranks agree on every time-based checkpoint;
the buffer-sync keyword passed to DDP is one the installed torch accepts."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.core.train_support import make_shards, make_tokenizer, micro_toml, result_stats, stage_spec
from wikigpt_core.train.runtime import _ddp_no_buffer_sync_keyword

ROOT = Path(__file__).parents[2]
# ckpt_minutes: a clock of 60 microseconds has always run out by the next step, so the time rule
# checkpoints every step; the ranks must agree on it, as each save ends in a barrier.
PRETRAIN = dict(max_steps=4, batch_size=4, grad_accum=4, lr=3e-3, warmup_steps=1, eval_interval=4,
                eval_iters=1, sample_interval=1000, ckpt_interval=2, ckpt_minutes=1e-6, log_interval=1,
                compile="off")


def run(launcher: list[str], tmp: Path, name: str, toml: str, inputs: dict[str, Path]) -> dict:
    spec = stage_spec(tmp / f"specs_{name}", "base_checkpoint", toml, inputs, tmp / name, tmp / f"work_{name}")
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                        "WIKIGPT_DEVICE": "cpu"}
    cmd = [*launcher, "-m", "wikigpt_core.run", "base_checkpoint", "--spec", str(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return result_stats(done.stdout)


def test_two_process_gloo_matches_single_process(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    shards = make_shards(tmp_path / "shards", tok)
    toml = micro_toml(tok.vocab_size, **PRETRAIN)
    inputs = {"token_shards": shards, "tokenizer": tmp_path / "tok"}
    single = run([sys.executable], tmp_path, "single", toml, inputs)
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
              tmp_path, "ddp", toml, inputs)
    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    assert ddp["steps"] == single["steps"] == 4
    assert ddp["tokens_trained"] == single["tokens_trained"] == 4 * 4 * 4 * 64  # steps x accum x B x T
    assert abs(ddp["train_loss"] - single["train_loss"]) < 1e-4
    assert abs(ddp["initial_loss"] - single["initial_loss"]) < 1e-5
    # Rank 0 wrote every due checkpoint exactly once (each of the 4 steps, by time), as the single
    # process did, and cleared its scratch after publishing: no checkpoint key dir is left behind.
    assert ddp["checkpoints_saved"] == single["checkpoints_saved"] == 4
    assert [p for p in (tmp_path / "work_ddp").iterdir() if len(p.name) == 16] == []


class DDPUpTo211:
    """DistributedDataParallel's constructor before `forward_sync_buffers` existed."""

    def __init__(self, module, device_ids=None, broadcast_buffers=True, bucket_cap_mb=None):
        pass


class DDPFrom213:
    def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
        pass


def test_buffer_sync_keyword_is_one_this_torch_accepts():
    assert _ddp_no_buffer_sync_keyword(DDPUpTo211) == "broadcast_buffers"
    assert _ddp_no_buffer_sync_keyword(DDPFrom213) == "forward_sync_buffers"
    installed = inspect.signature(DDP.__init__).parameters
    assert _ddp_no_buffer_sync_keyword(DDP) in installed
