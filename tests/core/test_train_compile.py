"""The GPU training path (torch.compile + bf16 autocast) exercised on CPU, on a micro model.

Inductor compiles for CPU with the machine's C compiler and CPU autocast runs bf16, so the
same `Trainer` code a 4090 runs (`precision = "bf16"`, `compile = "on"`) runs here:

- pretraining, packed SFT with document masking, and DPO each train a few optimizer steps
  (two micro-batches each) compiled in bf16, and their losses stay close to the eager float32
  run from the same weights on the same batches;
- the model's training forward traces into one graph (no graph breaks), plain and
  document-masked;
- after the first step nothing recompiles (dynamo's graph counter does not move, and the
  remaining steps run under the "fail_on_recompile" stance);
- KV-cache greedy decoding under bf16 autocast gives the float32 text.

Compiling is the slow part (tens of seconds per graph on two cores), so each stage's two runs
are computed once per module and shared by the tests that read them; shapes are tiny.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from tests.core.train_support import (  # noqa: F401 (fixture)
    greedy_recompute,
    make_pairs,
    make_sft_dataset,
    make_shards,
    make_tokenizer,
    micro_model,
    micro_train,
    single_thread,
)
from wikigpt_core.generation import SamplingParams, generate_ids
from wikigpt_core.model import GPT
from wikigpt_core.train.data import BlockBatches, TokenShards, encode_pairs, pack_examples, pair_tensors, render_sft_file
from wikigpt_core.train.metrics import MetricLogger
from wikigpt_core.train.objectives import DPOObjective, LMObjective
from wikigpt_core.train.runtime import Runtime
from wikigpt_core.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 3
BLOCK = 64
SEQ = 32  # pretraining window; SFT blocks and DPO pairs use their own fixed lengths
CPU = Runtime(torch.device("cpu"))
EAGER_FP32 = dict(compile="off", precision="fp32")
COMPILED_BF16 = dict(compile="on", precision="bf16")
# Loss deltas allowed between the compiled bf16 run and the eager fp32 run, per step. bf16
# keeps 8 bits of mantissa: logits differ by ~0.4 % relative, and a few AdamW steps amplify
# that a little (Adam normalises tiny gradient differences into lr-sized ones). Averaged over
# every position of a micro-batch, the measured deltas are ~1e-5.
LM_TOL = 0.01
DPO_TOL = 0.005


class NoCheckpoints:
    def due(self, step, final):
        return False

    def load_latest(self, model, optimizer):
        return None


@dataclasses.dataclass
class Run:
    losses: list[float]
    graphs_first_step: int | None = None
    """Dynamo graphs compiled during step 1 (None for an eager run)."""
    graphs_later: int | None = None
    """Dynamo graphs compiled during steps 2..STEPS: recompiles."""


def train(model: GPT, objective, data, precision_compile: dict, tokens_per_micro=None, **cfg) -> Run:
    """STEPS optimizer steps of the real Trainer; for a compiled run, count dynamo's graphs
    around the first step and forbid recompiles after it."""
    conf = micro_train(**{**cfg, **precision_compile})
    trainer = Trainer(model, objective, data, conf, CPU, max_steps=STEPS, tokens_per_micro=tokens_per_micro,
                      checkpointer=NoCheckpoints(), logger=MetricLogger(None))
    assert trainer.compiled == (precision_compile["compile"] == "on")
    assert trainer.runtime.autocast_dtype == (torch.bfloat16 if precision_compile["precision"] == "bf16" else None)
    if not trainer.compiled:
        return Run([float(trainer.train_step(s)[0]["loss/train"]) for s in range(STEPS)])
    # A stage process compiles only its own graph; without a reset, the shapes another stage
    # left in dynamo's frame state would turn this compile into a dynamic-shape one.
    torch._dynamo.reset()
    start = counters["stats"]["unique_graphs"]
    losses = [float(trainer.train_step(0)[0]["loss/train"])]
    after_first = counters["stats"]["unique_graphs"]
    with torch.compiler.set_stance("fail_on_recompile"):
        losses += [float(trainer.train_step(s)[0]["loss/train"]) for s in range(1, STEPS)]
    return Run(losses, after_first - start, counters["stats"]["unique_graphs"] - after_first)


def both(make_model, make_objective, data, **cfg) -> tuple[Run, Run]:
    """The eager fp32 run and the compiled bf16 run, from identical weights on identical batches."""
    init = make_model()
    eager = train(copy.deepcopy(init), make_objective(), data, EAGER_FP32, **cfg)
    compiled = train(copy.deepcopy(init), make_objective(), data, COMPILED_BF16, **cfg)
    return eager, compiled


def deltas(a: Run, b: Run) -> list[float]:
    return [abs(x - y) for x, y in zip(a.losses, b.losses)]


# ------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def new_model(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(micro_model(vocab_size=tok.vocab_size, block_size=BLOCK))


@pytest.fixture(scope="module")
def sft_blocks(tok, tmp_path_factory):
    data = make_sft_dataset(tmp_path_factory.mktemp("sft"), n=40)
    blocks, _ = pack_examples(render_sft_file(data / "train.jsonl", tok), BLOCK, tok.end_id, tok.end_id)
    return blocks


# ------------------------------------------------------------------ graph breaks (first: explain resets dynamo)


def test_training_forward_is_one_graph_without_breaks(tok, sft_blocks):
    model = new_model(tok).train()
    idx = torch.randint(0, tok.vocab_size, (2, SEQ))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch._dynamo.explain(model)(idx, idx)
        masked = torch._dynamo.explain(model)(sft_blocks["idx"][:2], sft_blocks["targets"][:2],
                                              doc_ids=sft_blocks["doc_ids"][:2])
    for name, ex in (("plain", plain), ("document-masked", masked)):
        assert ex.graph_break_count == 0, f"{name} forward breaks: {ex.break_reasons}"
        assert ex.graph_count == 1, name


# ------------------------------------------------------------------ the three objectives


@pytest.fixture(scope="module")
def pretrain_runs(tok, tmp_path_factory):
    shards = make_shards(tmp_path_factory.mktemp("shards"), tok)
    data = TokenShards(shards / "train.bin", SEQ, 4, seed=1)
    return both(lambda: new_model(tok), LMObjective, data)


@pytest.fixture(scope="module")
def sft_runs(tok, sft_blocks):
    # Several examples per block: the document mask is really in play.
    segments = [len(set(row.tolist()) - {-1}) for row in sft_blocks["doc_ids"]]
    assert min(segments) >= 2, segments
    data = BlockBatches(sft_blocks, batch_size=4, grad_accum=2, seed=3)
    return both(lambda: new_model(tok), LMObjective, data, lr=1e-3)


@pytest.fixture(scope="module")
def dpo_runs(tok, tmp_path_factory):
    pairs_dir = make_pairs(tmp_path_factory.mktemp("pairs"), n=24)
    pairs, _ = encode_pairs(pairs_dir / "pairs.jsonl", tok, BLOCK)
    data = BlockBatches(pair_tensors(pairs, tok.end_id), batch_size=4, grad_accum=2, seed=5)
    reference = new_model(tok)
    return both(lambda: new_model(tok), lambda: DPOObjective(copy.deepcopy(reference), beta=0.1),
                data, lr=1e-3, tokens_per_micro=lambda b: int(b["chosen_len"].sum() + b["rejected_len"].sum()))


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
def test_compiled_bf16_losses_track_eager_fp32(stage, request):
    eager, compiled = request.getfixturevalue(f"{stage}_runs")
    d = deltas(eager, compiled)
    print(f"{stage}: eager fp32 {eager.losses} compiled bf16 {compiled.losses} |delta| {d}")
    assert len(d) == STEPS
    assert max(d) < (DPO_TOL if stage == "dpo" else LM_TOL), d
    assert max(d) > 0  # bf16 really ran: bit-equal losses would mean float32 in both
    if stage == "dpo":  # policy == reference at step 1 in either precision: exactly ln 2
        assert abs(compiled.losses[0] - 0.693147) < 1e-3
    else:  # and the model learns in both runs
        assert eager.losses[-1] < eager.losses[0] and compiled.losses[-1] < compiled.losses[0]


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
def test_one_graph_and_no_recompiles_after_the_first_step(stage, request):
    _, compiled = request.getfixturevalue(f"{stage}_runs")
    # Step 1 compiled the training forward as one graph (a graph break would make two).
    assert compiled.graphs_first_step == 1, compiled
    assert compiled.graphs_later == 0, compiled


def test_dpo_cuts_micro_batches_to_length_buckets(tok, tmp_path_factory):
    pairs_dir = make_pairs(tmp_path_factory.mktemp("pairs_shape"), n=8)
    pairs, _ = encode_pairs(pairs_dir / "pairs.jsonl", tok, BLOCK)
    batch = pair_tensors(pairs, tok.end_id)
    batch["chosen_idx"] = torch.cat([batch["chosen_idx"], torch.full((8, 7), tok.end_id)], 1)
    for k in ("chosen_targets", "rejected_targets"):
        batch[k] = torch.cat([batch[k], torch.full((8, 7), -100)], 1)
    batch["rejected_idx"] = torch.cat([batch["rejected_idx"], torch.full((8, 7), tok.end_id)], 1)
    objective = DPOObjective(new_model(tok), bucket=8)
    width = batch["chosen_idx"].shape[1]
    cut = objective._trim(batch)["chosen_idx"].shape[1]
    assert cut < width and cut % 8 == 0  # padding past the bucket dropped
    objective.static_shapes = True
    assert objective._trim(batch)["chosen_idx"].shape[1] == width  # the memory estimate's worst case
    model = new_model(tok)
    with torch.no_grad():
        objective.static_shapes = False
        trimmed, _ = objective(model, batch)
        objective.static_shapes = True
        full, _ = objective(model, batch)
    torch.testing.assert_close(trimmed, full)  # the padding never counted


# ------------------------------------------------------------------ decoding


@pytest.fixture(scope="module")
def trained_micro(tok, tmp_path_factory):
    """A micro model trained (eager fp32) until its next-token choices are decisive: a random
    init has near-ties that any rounding flips, which would test nothing about the cache."""
    shards = make_shards(tmp_path_factory.mktemp("shards_decode"), tok)
    data = TokenShards(shards / "train.bin", BLOCK, 8, seed=2)
    model = new_model(tok)
    trainer = Trainer(model, LMObjective(), data, micro_train(lr=1e-2, warmup_steps=5, grad_accum=1, **EAGER_FP32),
                      CPU, max_steps=80, checkpointer=NoCheckpoints(), logger=MetricLogger(None))
    for step in range(80):
        trainer.train_step(step)
    return model.eval()


def test_kv_cache_decode_under_bf16_autocast_matches_fp32_greedy_text(tok, trained_micro):
    prompts = ["The river", "Famous painter born in the", "Church"]
    greedy = [SamplingParams(24, 0.0, 1.0)]
    for text in prompts:
        idx = [tok.doc_id] + tok.encode(text)
        (fp32,) = generate_ids(trained_micro, [idx], greedy, tok=tok)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cache = trained_micro.new_cache(1)
            (bf16,) = generate_ids(trained_micro, [idx], greedy, tok=tok)
            bf16_nocache = greedy_recompute(trained_micro, idx, 24)
        assert cache.k[0].dtype == torch.bfloat16  # the cache really holds bf16 keys/values
        assert bf16.tokens == fp32.tokens and bf16.text == fp32.text, text
        assert bf16.tokens == bf16_nocache, text  # the bf16 cache path equals recomputation


# ------------------------------------------------------------------ the settings themselves


def test_precision_and_compile_are_settings_with_auto_keeping_the_device_default():
    from wikigpt_core.config import TrainConfig, apply_overrides, load_settings
    from wikigpt_core.train.runtime import should_compile

    cfg = TrainConfig()
    assert (cfg.precision, cfg.compile) == ("auto", "auto")
    assert CPU.with_precision("auto").autocast_dtype is None  # auto: float32 on CPU
    assert not should_compile("auto", CPU)
    assert CPU.with_precision("bf16").autocast_dtype == torch.bfloat16
    with CPU.with_precision("bf16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with CPU.with_precision("fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert should_compile("on", CPU) and not should_compile("off", CPU)
    settings = apply_overrides(load_settings("tiny", env=False),
                               {"pretrain": {"precision": "bf16", "compile": "on"}})
    assert (settings.pretrain.precision, settings.pretrain.compile) == ("bf16", "on")
    for bad in ({"precision": "fp16"}, {"compile": "yes"}):
        with pytest.raises(ValueError, match="is not one of"):
            apply_overrides(settings, {"sft": bad})
