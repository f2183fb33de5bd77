"""The GPU memory estimate: fake-tensor step against the real one, the 124m stages against a
24 GB card, and what happens when a card is too small."""
from __future__ import annotations

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from wikigpt_core.config import TrainConfig, load_settings
from wikigpt_core.model import GPTConfig
from wikigpt_core.model_io import CONFIG_FILE, config_to_dict
from wikigpt_core.train import memory
from wikigpt_core.train.data import BlockBatches
from wikigpt_core.train.runtime import Runtime

SMALL = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64, mlp_multiple_of=64)
STAGES = ("pretrain", "sft", "dpo")
PARAMS_124M = 110_119_680  # the 124m shape's parameters, tied head counted once
GIB = memory.GIB


def allocator_peak(run) -> int:
    """Peak of the CPU allocator's own record (the profiler's alloc/free events) while `run`
    runs: a count independent of the estimate's dispatch-level one."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("stage", STAGES)
def test_fake_estimate_matches_the_real_steps_allocator_peak(stage):
    cfg = TrainConfig(batch_size=4, grad_accum=2)
    estimated = memory.measure_step(stage, SMALL, cfg, 4, fake=True).peak
    measured = allocator_peak(lambda: memory.measure_step(stage, SMALL, cfg, 4, fake=False))
    assert measured > 0
    assert abs(estimated - measured) <= 0.10 * measured, (estimated, measured)


def test_live_bytes_counts_a_storage_once_and_frees_it():
    counter = memory.LiveBytes()
    with counter:
        a = torch.empty(1_000, dtype=torch.float32)
        view = a[:10]
        assert counter.live == 4_000  # the view shares a's storage
        del a
        assert counter.live == 4_000  # still held by the view
        del view
        b = torch.empty(100, dtype=torch.bfloat16)
    assert counter.live == 200 and counter.peak == 4_000
    del b


@pytest.mark.parametrize("stage", STAGES)
def test_124m_stages_fit_a_24_gb_card_at_their_configured_micro_batch(stage):
    settings = load_settings("124m", env=False)
    train_cfg = settings.section(stage)
    e = memory.estimate(stage, settings.model, train_cfg)
    assert (e.micro_batch, e.length) == (train_cfg.batch_size, settings.model.block_size)
    # params, grads, two AdamW moments; DPO's reference is not in the step (stored log-probs)
    assert e.model_state_bytes == 4 * 4 * PARAMS_124M and e.step.frozen == 0
    assert e.activation_bytes > 2 * GIB  # 12 layers of activations for 16,384 tokens
    card = memory.card_bytes("RTX4090:1")[0]
    assert card == int(23.6 * GIB)
    plan = memory.plan_micro_batch(stage, settings.model, train_cfg, card)
    assert not plan.adjusted and e.total_bytes <= card
    assert plan.describe().startswith(f"[memory] {stage}: micro-batch {train_cfg.batch_size} x 1024")


def test_an_8_gib_card_lowers_the_micro_batch_and_keeps_the_global_batch():
    settings = load_settings("124m", env=False)
    cfg = settings.pretrain  # 16 x 1,024, grad_accum 32
    plan = memory.plan_micro_batch("pretrain", settings.model, cfg, 8 * GIB)
    assert plan.adjusted and plan.micro_batch < 16 and 16 % plan.micro_batch == 0
    assert plan.estimate.total_bytes <= 8 * GIB
    bigger = memory.estimate("pretrain", settings.model, cfg, plan.micro_batch * 2)
    assert bigger.total_bytes > 8 * GIB  # the largest micro-batch that fits was taken
    fitted = memory.fitted_config(cfg, plan)
    assert fitted.batch_size * fitted.grad_accum == cfg.batch_size * cfg.grad_accum
    assert f"lowered from batch_size 16 x grad_accum 32 to {plan.micro_batch} x {fitted.grad_accum}" \
        in plan.describe()


def test_a_1_gib_card_is_refused_with_the_numbers():
    settings = load_settings("124m", env=False)
    with pytest.raises(memory.MemoryFitError) as err:
        memory.plan_micro_batch("pretrain", settings.model, settings.pretrain, GIB)
    message = str(err.value)
    one = memory.estimate("pretrain", settings.model, settings.pretrain, 1)
    assert "1.0 GiB card even at micro-batch 1" in message
    assert f"{one.total_bytes / GIB:.1f} GiB needed" in message
    assert "model state 1.64 GiB" in message


def test_split_batches_give_each_step_the_configured_rows():
    rows = torch.arange(40).unsqueeze(1).expand(40, 3).contiguous()
    cfg = TrainConfig(batch_size=4, grad_accum=2)
    configured = BlockBatches({"idx": rows}, cfg.batch_size, cfg.grad_accum, seed=5)
    split = memory.SplitBatches(BlockBatches({"idx": rows}, cfg.batch_size, cfg.grad_accum, seed=5), 2)
    for step in range(3):
        whole = torch.cat([configured.batch(step, m)["idx"] for m in range(2)])
        parts = [split.batch(step, m)["idx"] for m in range(4)]
        assert all(p.shape == (2, 3) for p in parts)
        assert torch.equal(torch.cat(parts), whole)
    assert split.n == 40  # the wrapped source's other attributes pass through


def test_fit_to_device_cuts_micro_batches_on_a_small_card(monkeypatch, capsys):
    cfg = TrainConfig(batch_size=8, grad_accum=2)
    needed = {m: memory.estimate("sft", SMALL, cfg, m).total_bytes for m in (8, 4)}
    card = (needed[8] + needed[4]) // 2  # 4 fits, 8 does not
    props = type("Props", (), {"total_memory": card})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    data = BlockBatches({"idx": torch.zeros(32, 64, dtype=torch.long)}, 8, 2, seed=0)
    step_cfg, step_data = memory.fit_to_device("sft", SMALL, cfg, data, Runtime(torch.device("cuda", 0)))
    assert (step_cfg.batch_size, step_cfg.grad_accum) == (4, 4)
    assert isinstance(step_data, memory.SplitBatches) and step_data.split == 2
    assert "lowered from batch_size 8 x grad_accum 2 to 4 x 4" in capsys.readouterr().out


def test_fit_to_device_leaves_a_cpu_run_alone():
    cfg = TrainConfig(batch_size=8)
    data = object()
    assert memory.fit_to_device("sft", SMALL, cfg, data, Runtime(torch.device("cpu"))) == (cfg, data)


def test_preflight_reads_the_model_from_the_spec_and_the_card_from_the_task(tmp_path, monkeypatch):
    from tests.core.train_support import stage_spec

    base = tmp_path / "base"
    base.mkdir()
    (base / CONFIG_FILE).write_text(json.dumps(config_to_dict(SMALL)))
    (tmp_path / "sft_data").mkdir()
    (tmp_path / "shards").mkdir()
    spec = stage_spec(tmp_path / "specs", "sft_checkpoint", "[sft]\nbatch_size = 4\n",
                      {"base_checkpoint": base, "sft_dataset": tmp_path / "sft_data",
                       "token_shards": tmp_path / "shards"}, tmp_path / "out", tmp_path / "work")
    args = ["--spec", str(spec)]
    plan = memory.preflight("sft_checkpoint", args, "RTX4090:1")
    assert plan is not None and not plan.adjusted
    assert plan.estimate.length == SMALL.block_size  # the shape came from the base checkpoint
    assert memory.preflight("sft_checkpoint", args, "NO-SUCH-CARD:1") is None  # checked on the box
    assert memory.preflight("eval_report", args, "RTX4090:1") is None  # not a training stage
    monkeypatch.setitem(memory.CARD_USABLE_BYTES, "TOY", 64 << 20)
    with pytest.raises(memory.MemoryFitError, match="does not fit a 0.1 GiB card"):
        memory.preflight("sft_checkpoint", args, {"TOY": 1})


def test_a_split_step_makes_the_configured_update():
    from wikigpt_core.model import GPT
    from wikigpt_core.train.objectives import LMObjective
    from wikigpt_core.train.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SMALL.vocab_size, (16, SMALL.block_size + 1), generator=g)
    blocks = {"idx": tokens[:, :-1].contiguous(), "targets": tokens[:, 1:].contiguous()}
    cfg = TrainConfig(batch_size=4, grad_accum=2, precision="fp32", compile="off", warmup_steps=0)
    plan = memory.MemoryPlan("pretrain", GIB, 4, 2, memory.estimate("pretrain", SMALL, cfg, 2))

    def weights_after_a_step(train_cfg, data) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        trainer = Trainer(GPT(SMALL), LMObjective(), data, train_cfg, Runtime(torch.device("cpu")),
                          max_steps=1, checkpointer=None, logger=None)
        trainer.train_step(0)
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    configured = weights_after_a_step(cfg, BlockBatches(blocks, 4, 2, seed=3))
    split = weights_after_a_step(memory.fitted_config(cfg, plan),
                                 memory.SplitBatches(BlockBatches(blocks, 4, 2, seed=3), plan.split))
    assert plan.split == 2
    for name, w in configured.items():
        torch.testing.assert_close(split[name], w, rtol=1e-5, atol=1e-6)
