"""The fixed 20-prompt gallery (wikigpt_core/resources/gallery_prompts.json; docs/reference.md,
"Evaluation")."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

from wikigpt_core.eval.generation import generate_replies

GALLERY_FILE = "gallery_prompts.json"
GALLERY_TYPES = ("grounded_qa", "summarize", "extract", "false_premise")


def load_gallery() -> list[dict[str, Any]]:
    """[{id, type, prompt}], validated: 20 unique ids, known types, non-empty prompts."""
    raw = json.loads(resources.files("wikigpt_core").joinpath("resources", GALLERY_FILE).read_text("utf-8"))
    prompts = raw["prompts"]
    ids = [p["id"] for p in prompts]
    if len(prompts) != 20 or len(set(ids)) != 20:
        raise ValueError(f"{GALLERY_FILE} must hold 20 prompts with unique ids, found {len(prompts)}")
    for p in prompts:
        if p["type"] not in GALLERY_TYPES or not p["prompt"].strip():
            raise ValueError(f"{GALLERY_FILE} prompt {p['id']}: type must be one of {GALLERY_TYPES} "
                             "and the prompt non-empty")
    return prompts


def run_gallery(models: dict[str, Any], tok, *, max_new_tokens: int, temperature: float,
                top_p: float, seed: int) -> list[dict[str, Any]]:
    """Every gallery prompt answered by every model, verbatim (failures included)."""
    gallery = load_gallery()
    convs = [[{"role": "user", "content": g["prompt"]}] for g in gallery]
    rows = [{"id": g["id"], "type": g["type"], "prompt": g["prompt"]} for g in gallery]
    for name, model in models.items():
        replies = generate_replies(model, tok, convs, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed)
        for row, (r,) in zip(rows, replies):
            row[name] = r.text
            row[f"{name}_stopped"] = r.stopped  # shown in report.md only, not in report.json
    return rows
