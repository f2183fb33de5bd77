"""wikigpt_core: the ML and data library behind WikiGPT.

Every stage is a plain function plus a CLI (`python -m wikigpt_core.<stage>`), so a GPU box
with no Dagster can run it. This package never imports dagster.
"""

__version__ = "0.1.0"
