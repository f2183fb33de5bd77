"""The twelve WikiGPT assets, one module per stage group."""
from __future__ import annotations

import dagster as dg

from wikigpt_core.config import Settings
from wikigpt_pipeline.assets import alignment, data, evaluation, release, training


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [
        *data.build(settings),
        *training.build(settings),
        *alignment.build(settings),
        *evaluation.build(settings),
        *release.build(settings),
    ]
