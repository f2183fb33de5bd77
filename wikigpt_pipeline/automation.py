"""Opt-in automation that respects DataVersions.

`AutomationCondition.eager()` treats every parent materialization as an update, so a parent
rerun that wrote identical bytes would still trigger its children. Swapping `newly_updated`
for `data_version_changed()` makes the condition fire only when a parent's data changed.
Enable it by turning on the default automation sensor in the UI (Automation tab).
"""
from __future__ import annotations

import dagster as dg


def data_eager() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager().replace(
        "newly_updated", dg.AutomationCondition.data_version_changed()
    )
