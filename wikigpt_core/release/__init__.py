"""The Hugging Face release: core checkpoint -> stock `LlamaForCausalLM` folder, model card,
run manifest, license, optional Hub upload (`run_release`)."""
from wikigpt_core.release.stage import run_release

__all__ = ["run_release"]
