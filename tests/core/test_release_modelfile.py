"""The Ollama Modelfile: its Go template, rendered for the conversations Ollama sends, gives the
same prompt text as the release's own chat template in transformers; its stop parameters are the
release's end-of-reply token and the other specials; its sampling defaults are the release's.
Ollama itself is not needed: tests/core/go_template.py renders the subset of Go templates used."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import go_template  # noqa: E402
import test_release_support as support  # noqa: E402

from wikigpt_core.release.modelfile import OLLAMA_TEMPLATE, render_modelfile, write_modelfile  # noqa: E402
from wikigpt_core.tokenizer import SPECIAL_TOKENS  # noqa: E402

transformers = pytest.importorskip("transformers")

SYSTEM_AND_TWO_TURNS = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Who was Ada Lovelace?"},
    {"role": "assistant", "content": "An English mathematician."},
    {"role": "user", "content": "What did she write about?"},
]
CONVERSATIONS = {
    "system and two turns": SYSTEM_AND_TWO_TURNS,
    "no system": SYSTEM_AND_TWO_TURNS[1:],
    "empty system": [{"role": "system", "content": ""}, *SYSTEM_AND_TWO_TURNS[1:]],
    "one turn with system": SYSTEM_AND_TWO_TURNS[:2],
}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modelfile")
    support.train_tokenizer(tmp / "tok")
    return support.build_release(tmp, support.random_model(320), tmp / "tok")


def _modelfile(release: Path, tmp: Path) -> str:
    return write_modelfile(release, tmp, "m-Q4_K_M.gguf").read_text()


def _template_of(modelfile: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)


def _parameters(modelfile: str) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 2)[1:]) for line in modelfile.splitlines() if line.startswith("PARAMETER ")]


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_modelfile_template_renders_the_release_chat_template(release, tmp_path, name):
    messages = CONVERSATIONS[name]
    # Ollama hands the template its api.Message structs: Go fields Role and Content.
    go_messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    ollama = go_template.render(_template_of(_modelfile(release, tmp_path)), {"Messages": go_messages})
    hf = transformers.AutoTokenizer.from_pretrained(release)
    assert ollama == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if name == "system and two turns":  # the fold is really there, not two empty renders agreeing
        assert ollama == ("<|user|>You answer briefly.\n\nWho was Ada Lovelace?<|end|>"
                          "<|assistant|>An English mathematician.<|end|>"
                          "<|user|>What did she write about?<|end|><|assistant|>")


def test_modelfile_stops_and_sampling_are_the_releases(release, tmp_path):
    params = _parameters(_modelfile(release, tmp_path))
    stops = [json.loads(v) for k, v in params if k == "stop"]
    gen = json.loads((release / "generation_config.json").read_text())
    hf = transformers.AutoTokenizer.from_pretrained(release)
    assert stops[0] == hf.convert_ids_to_tokens(gen["eos_token_id"]) == "<|end|>"
    assert sorted(stops) == sorted(SPECIAL_TOKENS)  # no special token can end up in a reply
    values = {k: v for k, v in params if k != "stop"}
    assert float(values["temperature"]) == gen["temperature"] and float(values["top_p"]) == gen["top_p"]
    assert int(values["num_ctx"]) == json.loads((release / "config.json").read_text())["max_position_embeddings"]


def test_go_renderer_refuses_what_it_does_not_know():
    with pytest.raises(ValueError):
        go_template.render("{{ printf \"%s\" .X }}", {"X": 1})
    with pytest.raises(ValueError, match="end"):
        go_template.render("{{ if .X }}a", {"X": 1})
    # trim markers eat whitespace on their side only
    assert go_template.render("a \n{{- .X -}}\n b {{ .X }}", {"X": "x"}) == "axb x"


def test_modelfile_quotes_its_strings():
    text = render_modelfile("m.gguf", {"temperature": 0.7})
    assert 'PARAMETER stop "<|end|>"' in text and f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in text
