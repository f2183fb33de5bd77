"""The three checkpoints the pipeline trains, declared once: their short names (how the eval,
its report and the model card label them) and the assets that hold them."""

CHECKPOINTS = ("base", "sft", "dpo")
CHECKPOINT_ASSETS = {name: f"{name}_checkpoint" for name in CHECKPOINTS}
