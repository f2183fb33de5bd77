"""UTF-8-safe incremental detokenization lives in the generation module; re-exported here
for the serving code that imports it from this place."""
from wikigpt_core.generation.text import REPLACEMENT, IncrementalDecoder

__all__ = ["REPLACEMENT", "IncrementalDecoder"]
