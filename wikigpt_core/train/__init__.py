"""The training engine: one Trainer, three objectives (pretraining, SFT, DPO).

Modules: `config` (step counts, hashes), `runtime` (device, DDP, autocast, compile),
`schedule` (cosine LR), `data` (memmap shards, packed SFT blocks, preference pairs),
`objectives` (LM and DPO losses), `checkpoint` (atomic, resumable), `metrics` (JSONL, W&B,
callback), `trainer` (the loop).
"""
