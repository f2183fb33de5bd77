"""The Ollama `Modelfile` of a GGUF release: which file, the chat template in Ollama's Go
template syntax, the stop tokens and the default sampling parameters.

The template writes the release's chat format (docs/reference.md, "Chat format") from
Ollama's `.Messages`: a system message is held back and folded into the first user turn as
"{system}\\n\\n{user}" (an empty one is dropped), exactly as the release's Jinja template does;
the prompt ends with <|assistant|>. Ollama stops at any `stop` string; the model ends a reply
with <|end|>, and the other specials never belong in a reply either.
"""
from __future__ import annotations

import json
from pathlib import Path

from wikigpt_core.chat import SYSTEM_SEPARATOR
from wikigpt_core.tokenizer import ASSISTANT, END, SPECIAL_TOKENS, USER

# `$system` carries a system message to the next user turn. Go templates keep text between
# actions verbatim, so the separator is written as a literal; `{{-` trims only the line breaks
# that lay the template out.
OLLAMA_TEMPLATE = (
    '{{- $system := "" }}\n'
    "{{- range .Messages }}\n"
    '{{- if eq .Role "system" }}{{ $system = .Content }}\n'
    '{{- else if eq .Role "user" }}' + USER
    + "{{ if $system }}{{ $system }}" + SYSTEM_SEPARATOR + "{{ end }}"
    + '{{ .Content }}' + END + '{{ $system = "" }}\n'
    '{{- else if eq .Role "assistant" }}' + ASSISTANT + "{{ .Content }}" + END + "\n"
    "{{- end }}\n"
    "{{- end }}" + ASSISTANT
)

STOP_TOKENS = (END, *(t for t in SPECIAL_TOKENS if t != END))
"""<|end|> first: it is how every reply ends."""


def sampling_defaults(release: Path) -> dict[str, float]:
    """Ollama's PARAMETERs from the release's own serving defaults (generation_config.json)
    and its context length (config.json)."""
    gen = json.loads((Path(release) / "generation_config.json").read_text(encoding="utf-8"))
    hf = json.loads((Path(release) / "config.json").read_text(encoding="utf-8"))
    params: dict[str, float] = {k: gen[k] for k in ("temperature", "top_p", "top_k") if k in gen}
    params["num_ctx"] = int(hf["max_position_embeddings"])
    return params


def _quoted(text: str) -> str:
    return json.dumps(text)  # a double-quoted string with \" and \\ escaped, as Ollama reads it


def render_modelfile(gguf_file: str, params: dict[str, float]) -> str:
    lines = [f"FROM ./{gguf_file}", "", f'TEMPLATE """{OLLAMA_TEMPLATE}"""', ""]
    lines += [f"PARAMETER stop {_quoted(s)}" for s in STOP_TOKENS]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_modelfile(release: Path, out: Path, gguf_file: str) -> Path:
    path = Path(out) / "Modelfile"
    path.write_text(render_modelfile(gguf_file, sampling_defaults(release)), encoding="utf-8")
    return path
