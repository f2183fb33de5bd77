"""The training engine: one Trainer, three objectives (pretraining, SFT, DPO).

Modules: `config` (step counts, run keys), `runtime` (device, DDP, autocast, compile,
optimizer), `schedule` (cosine LR), `data` (memmap shards, packed SFT blocks, preference
pairs), `objectives` (LM and DPO losses), `checkpoint` (atomic, resumable), `metrics`
(JSONL, W&B, callback; FLOPs and GPU peaks), `trainer` (the loop), `stage` (trainer ->
artifact), `samples` (text samples during training), `memory` (will a run fit on a GPU).

Decisions, in brief:
- Precision: on CUDA, float32 master weights and AdamW state, bf16 autocast for the forward
  and backward, TF32 allowed, torch.compile, fused AdamW; causal bf16 attention goes to SDPA's
  flash kernel. On CPU, float32 eager (compile only with `compile = "on"`).
- Weight decay 0.1 on every matrix, including the tied embedding/head; none on RMSNorm gains
  (see `runtime.param_groups` for why).
- Data: every micro-batch is a pure function of (seed, step, micro index). The data position
  in a checkpoint is the step; DDP rank r runs micro-batches r, r+W, ... of the same global
  batch, so 1 GPU and N GPUs train the same model and a run may resume on another GPU count.
- Checkpoints: `<work>/<run key>/ckpt-<step>/` with model.safetensors and resume.pt
  (optimizer, step, RNG, data position; loaded with weights_only=True), written atomically,
  the last K kept. The run key hashes model + training config + input content hashes, so a
  changed config or input never resumes a stale run. On CPU a resumed run is bit-identical.
- Logging: `loss/train`, `loss/val`, `ppl/val`, `lr`, `grad_norm`, `tps`, `time/step_ms`,
  `mfu` (known GPUs), `sft/...`, `dpo/...` to log.jsonl, W&B (offline under <work>/wandb
  unless WANDB_MODE says otherwise) and the `on_metrics` callback (Dagster metadata).
"""
