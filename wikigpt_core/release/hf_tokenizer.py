"""Tokenizer files of the release: `tokenizer.json`, `tokenizer_config.json` and
`generation_config.json`, so `AutoTokenizer` + `apply_chat_template` reproduce the core's
chat rendering id for id and `generate` stops on <|end|>."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from wikigpt_core.chat import CHAT_TEMPLATE
from wikigpt_core.tokenizer import ASSISTANT, DOC_SEP, END, SPECIAL_TOKENS, TOKENIZER_FILE, USER, WikiTokenizer


def tokenizer_config(tok: WikiTokenizer, model_max_length: int) -> dict[str, Any]:
    """HF tokenizer_config.json: the chat template, the four specials, eos <|end|>, pad
    <|endoftext|>, and no automatic BOS/EOS (the template places every special itself)."""
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    assert [tok.doc_id, tok.user_id, tok.assistant_id, tok.end_id] == [0, 1, 2, 3]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": added,
        "additional_special_tokens": [USER, ASSISTANT],
        "bos_token": None,
        "eos_token": END,
        "pad_token": DOC_SEP,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }


def generation_config(tok: WikiTokenizer, context: int) -> dict[str, Any]:
    """Serving defaults (docs/reference.md, "Serving"): sample at temperature 0.7, top-p 0.9;
    stop on <|end|>. The length limit is the context (`max_length`), never a `max_new_tokens`:
    `generate` lets a `max_new_tokens` here override a caller's `max_length`, so a caller asking
    for 32 tokens would get 256, past the context; a caller's own setting of either wins."""
    return {
        "eos_token_id": tok.end_id,
        "pad_token_id": tok.doc_id,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_length": context,
    }


def write_tokenizer_files(tokenizer_dir: Path, out_dir: Path, model_max_length: int) -> WikiTokenizer:
    """Copy tokenizer.json (byte for byte) and write the two HF config files into out_dir."""
    tok = WikiTokenizer.load(tokenizer_dir)  # validates the specials before anything ships
    src = Path(tokenizer_dir)
    src = src / TOKENIZER_FILE if src.is_dir() else src
    shutil.copyfile(src, Path(out_dir) / TOKENIZER_FILE)
    _write_json(Path(out_dir) / "tokenizer_config.json", tokenizer_config(tok, model_max_length))
    _write_json(Path(out_dir) / "generation_config.json", generation_config(tok, model_max_length))
    return tok


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
