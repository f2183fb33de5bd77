"""Checkpoints: a run that crashes and restarts ends bit-identical to an uninterrupted one (CPU);
a real SIGKILL mid-run resumes from the last checkpoint; keep-last-K; a changed config never
resumes a stale checkpoint; the resume file loads with weights_only=True."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.core.train_support import result_stats, make_shards, make_tokenizer, micro_model, micro_toml, micro_train, single_thread, stage_spec  # noqa: F401 (fixture)
from wikigpt_core.pretrain import run_pretrain

pytestmark = pytest.mark.usefixtures("single_thread")


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tok = make_tokenizer(root / "tok")
    return make_shards(root / "shards", tok), tok.vocab_size


def crash_at(step_to_crash: int):
    def cb(metrics, step):
        if step == step_to_crash and "loss/train" in metrics:
            raise Crash(f"simulated crash at step {step}")
    return cb


def last_checkpoint(work: Path) -> int:
    """The newest complete checkpoint's step under a work dir, 0 if none."""
    return max((int(p.name.split("-")[1]) for p in work.glob("*/ckpt-*")), default=0)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_resume_is_bit_identical(tmp_path, shards):
    shards_dir, vocab = shards
    cfg, mcfg = micro_train(max_steps=6, ckpt_interval=2), micro_model(vocab)
    full = run_pretrain(mcfg, cfg, shards_dir, tmp_path / "a", tmp_path / "work_a")

    work = tmp_path / "work_b"
    with pytest.raises(Crash):
        run_pretrain(mcfg, cfg, shards_dir, tmp_path / "b", work, on_metrics=crash_at(5))
    ckpts = sorted(p.name for p in work.glob("*/ckpt-*"))
    assert ckpts == ["ckpt-00000002", "ckpt-00000004"]  # keep_last_k = 2
    assert not (tmp_path / "b").exists()  # nothing published by the crashed run
    resume_file = next(work.glob("*/ckpt-00000004")) / "resume.pt"
    state = torch.load(resume_file, weights_only=True)
    assert state["step"] == 4 and state["data_position"] == 4 and "optimizer" in state and "rng" in state

    resumed = run_pretrain(mcfg, cfg, shards_dir, tmp_path / "b", work)
    a, b = weights(full.path), weights(resumed.path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    for key in ("steps", "tokens_trained", "initial_loss", "train_loss", "val_loss"):
        assert resumed.stats[key] == full.stats[key], key
    log = [json.loads(l) for l in (resumed.path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"step": 4, "resumed_from": 4} in log
    train_steps = [r["step"] for r in log if "loss/train" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # the lost step 5 of the crashed run is not duplicated


def test_checkpointer_keeps_last_k_and_ignores_partial_writes(tmp_path):
    from wikigpt_core.model import GPT
    from wikigpt_core.train.checkpoint import Checkpointer

    torch.manual_seed(0)
    model = GPT(micro_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (2, 8)), torch.randint(0, 300, (2, 8)))[1].backward()
    opt.step()
    ck = Checkpointer(tmp_path, "k" * 16, interval=1, keep_last_k=2)
    for step in (1, 2, 3):
        ck.save(step, model, opt, {"data_position": step})
    assert [p.name for p in ck.checkpoints()] == ["ckpt-00000002", "ckpt-00000003"]
    # a kill while writing leaves only a temp dir, never a ckpt-* dir: the next start drops it
    partial = ck.dir / ".tmp-deadbeef"
    partial.mkdir()
    (partial / "resume.pt").write_bytes(b"truncated")
    fresh_model, ck2 = GPT(micro_model()), Checkpointer(tmp_path, "k" * 16, interval=1, keep_last_k=2)
    assert not partial.exists()
    fresh_opt = torch.optim.AdamW(fresh_model.parameters(), lr=1e-3)
    state = ck2.load_latest(fresh_model, fresh_opt)
    assert state["step"] == 3 and state["data_position"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))
    exp = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], exp)
    # another run key (changed config) clears this one
    Checkpointer(tmp_path, "z" * 16, interval=1, keep_last_k=2)
    assert not ck.dir.exists()


def test_changed_config_does_not_resume(tmp_path, shards):
    shards_dir, vocab = shards
    work = tmp_path / "work"
    with pytest.raises(Crash):
        run_pretrain(micro_model(vocab), micro_train(max_steps=4), shards_dir, tmp_path / "o", work,
                     on_metrics=crash_at(4))
    old_keys = {p.name for p in work.iterdir() if len(p.name) == 16}
    res = run_pretrain(micro_model(vocab), micro_train(max_steps=4, lr=1e-3), shards_dir, tmp_path / "o", work)
    log = (res.path / "run" / "log.jsonl").read_text()
    assert "resumed_from" not in log
    assert not any((work / k).exists() for k in old_keys)  # the stale run's checkpoints are gone


PRETRAIN = dict(batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2, eval_interval=100, eval_iters=1,
                sample_interval=1000, ckpt_interval=2, log_interval=1, compile="off")


def test_sigkill_then_restart_continues_from_last_checkpoint(tmp_path, shards):
    shards_dir, vocab = shards
    steps = 40
    toml = micro_toml(vocab, max_steps=steps, **PRETRAIN)
    inputs = {"token_shards": shards_dir, "tokenizer": shards_dir.parent / "tok"}
    work, out = tmp_path / "work", tmp_path / "out"
    spec = stage_spec(tmp_path / "specs", "base_checkpoint", toml, inputs, out, work)
    cmd = [sys.executable, "-m", "wikigpt_core.run", "base_checkpoint", "--spec", str(spec)]
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).parents[2]),
                        "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill at the first checkpoint at or past step 4. Any such checkpoint will do: keep-last-K
    # deletes ckpt-4 itself a few steps later, and on a fast machine that is quicker than a poll.
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and last_checkpoint(work) < 4:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended (rc {proc.returncode}) before it could be killed mid-run: "
        + proc.stderr.read().decode()[-2000:])
    assert not out.exists()
    assert 4 <= last_checkpoint(work) < steps

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = result_stats(done.stdout)
    assert stats["steps"] == steps
    log = [json.loads(l) for l in (out / "run" / "log.jsonl").read_text().splitlines()]
    resumed = [r["resumed_from"] for r in log if "resumed_from" in r]
    assert resumed and resumed[0] >= 4 and resumed[0] % 2 == 0
    assert [r["step"] for r in log if "loss/train" in r] == list(range(1, steps + 1))
    # and the killed-and-restarted run equals an uninterrupted one, bit for bit
    clean_spec = stage_spec(tmp_path / "specs2", "base_checkpoint", toml, inputs, tmp_path / "clean",
                            tmp_path / "w2")
    clean = [*cmd[:-1], str(clean_spec)]
    assert subprocess.run(clean, env=env, capture_output=True, timeout=300).returncode == 0
    a, b = weights(out), weights(tmp_path / "clean")
    assert all(torch.equal(a[k], b[k]) for k in a)
