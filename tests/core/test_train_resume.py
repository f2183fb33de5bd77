"""Checkpoints: a run that crashes and restarts ends bit-identical to an uninterrupted one (CPU),
also from a checkpoint written on four GPUs; a real SIGKILL mid-run resumes from the last
checkpoint; keep-last-K; a changed config never resumes a stale checkpoint; the resume file
loads with weights_only=True."""
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


def run_then_crash_at_5(tmp_path: Path, shards):
    """A full 6-step run (checkpoints every 2), and a second run of the same config that crashes
    at step 5, leaving its checkpoints in `work`. Returns (configs, the full result, work)."""
    shards_dir, vocab = shards
    cfg, mcfg = micro_train(max_steps=6, ckpt_interval=2), micro_model(vocab)
    full = run_pretrain(mcfg, cfg, shards_dir, tmp_path / "a", tmp_path / "work_a")
    work = tmp_path / "work_b"
    with pytest.raises(Crash):
        run_pretrain(mcfg, cfg, shards_dir, tmp_path / "b", work, on_metrics=crash_at(5))
    return (mcfg, cfg), full, work


def test_resume_is_bit_identical(tmp_path, shards):
    shards_dir, _ = shards
    (mcfg, cfg), full, work = run_then_crash_at_5(tmp_path, shards)
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


def four_gpu_rng_states() -> list[torch.Tensor]:
    """What older code saved on a 4-GPU box: torch.cuda.get_rng_state_all(), one ByteTensor
    (Philox seed and offset) per visible GPU."""
    return [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]


def refuse_four_states(states):
    raise IndexError(f"{len(states)} CUDA RNG states for 1 visible GPU")


def test_checkpoint_from_four_gpus_resumes_in_one_process_bit_identical(tmp_path, shards, monkeypatch):
    shards_dir, _ = shards
    (mcfg, cfg), full, work = run_then_crash_at_5(tmp_path, shards)
    resume_file = next(work.glob("*/ckpt-00000004")) / "resume.pt"
    state = torch.load(resume_file, weights_only=True)
    assert "cuda" not in state["rng"]  # trained on CPU: no CUDA generator to keep
    state["rng"]["cuda"] = four_gpu_rng_states()
    torch.save(state, resume_file)

    # As on a one-GPU box: CUDA is present, and restoring the four states there would fail.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse_four_states)
    resumed = run_pretrain(mcfg, cfg, shards_dir, tmp_path / "b", work, device="cpu")
    assert "resumed_from" in (resumed.path / "run" / "log.jsonl").read_text()
    a, b = weights(full.path), weights(resumed.path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.stats["train_loss"] == full.stats["train_loss"]


@pytest.fixture
def fake_cuda_rng(monkeypatch):
    """torch.cuda's RNG calls recorded instead of run, with CUDA reported present."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.append((s, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((16,), 9, dtype=torch.uint8))
    return calls


def test_only_the_current_devices_cuda_rng_state_is_saved_and_restored(fake_cuda_rng):
    from wikigpt_core.train.checkpoint import rng_state, set_rng_state

    gpu1 = torch.device("cuda", 1)
    state = rng_state(gpu1)
    assert torch.equal(state["cuda"], torch.full((16,), 9, dtype=torch.uint8))  # one state, not a list
    set_rng_state(state, gpu1)
    assert fake_cuda_rng[-1][1] == gpu1 and torch.equal(fake_cuda_rng[-1][0], state["cuda"])
    # older checkpoints: a list from 4 GPUs; this device's entry, or the first past its end
    set_rng_state({**state, "cuda": four_gpu_rng_states()}, torch.device("cuda", 2))
    assert int(fake_cuda_rng[-1][0][0]) == 2
    set_rng_state({**state, "cuda": four_gpu_rng_states()}, torch.device("cuda", 5))
    assert int(fake_cuda_rng[-1][0][0]) == 0
    n = len(fake_cuda_rng)
    set_rng_state({**state, "cuda": four_gpu_rng_states()}, torch.device("cpu"))
    assert len(fake_cuda_rng) == n  # a GPU checkpoint resumed on CPU: nothing to restore


def test_a_cuda_rng_state_is_skipped_without_cuda(monkeypatch):
    from wikigpt_core.train.checkpoint import rng_state, set_rng_state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.manual_seed(3)
    state = {**rng_state(torch.device("cpu")), "cuda": four_gpu_rng_states()}
    expected = torch.rand(3)
    set_rng_state(state, torch.device("cuda", 0))  # does not raise
    assert torch.equal(torch.rand(3), expected)  # and the CPU state was still restored


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
