"""wikigpt_pipeline: the Dagster glue over wikigpt_core (assets, resources, checks, schedules)."""
