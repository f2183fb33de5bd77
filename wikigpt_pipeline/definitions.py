"""The code location Dagster loads (`dagster dev` from the repo root, via workspace.yaml)."""
from wikigpt_core.config import load_settings
from wikigpt_pipeline.project import build_definitions

# Settings come from WIKIGPT_PROFILE / WIKIGPT_CONFIG / WIKIGPT_DUMP at load time; they feed
# every asset's code_version, so reloading after a config edit shows what went stale.
defs = build_definitions(load_settings())
