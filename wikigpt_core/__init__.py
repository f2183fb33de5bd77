"""wikigpt_core: the ML and data library behind WikiGPT.

Every stage is a plain function run by one CLI (`python -m wikigpt_core.run STAGE --spec FILE`),
so a GPU box with no Dagster can run it. This package never imports dagster.
"""

__version__ = "0.1.0"
