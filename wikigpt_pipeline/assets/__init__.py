"""The pipeline's assets: one per stage of the registry (wikigpt_core/stages.py)."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_core.stages import STAGES, is_enabled
from wikigpt_pipeline.factory import stage_asset


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [stage_asset(settings, stage) for stage in STAGES.values() if is_enabled(stage, settings)]
