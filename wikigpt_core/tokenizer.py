"""The WikiGPT tokenizer: a byte-level BPE `tokenizers.Tokenizer` plus four reserved specials.

Specials take the first ids, in this order, and are single tokens:
  0 <|endoftext|>  document separator in the pretraining shards
  1 <|user|>       2 <|assistant|>   3 <|end|>   chat template (docs/reference.md, "Chat format")
Chat text can never produce them: `encode` splits special-looking text into bytes
(`encode_special_tokens`), so a user who types "<|end|>" gets ordinary tokens. Chat rendering
inserts the special ids directly (see wikigpt_core.chat). A raw prompt (`encode_raw`, for
`/v1/completions`) is tokenized as the release's `tokenizer.json` does in transformers and vLLM:
there "<|end|>" is the one special id.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

DOC_SEP = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (DOC_SEP, USER, ASSISTANT, END)
TOKENIZER_FILE = "tokenizer.json"


class WikiTokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        # Text never turns into special ids; only explicit id insertion produces them.
        self._tok.encode_special_tokens = True
        # A copy that reads special-token text as the special, as AutoTokenizer does. A copy,
        # not a toggled flag: another thread may be encoding with the first at the same time.
        self._raw = Tokenizer.from_str(tokenizer.to_str())
        self._raw.encode_special_tokens = False
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(
                f"tokenizer specials must be {SPECIAL_TOKENS} at ids 0..3, found ids {ids}; "
                "retrain the tokenizer asset"
            )
        self.doc_id, self.user_id, self.assistant_id, self.end_id = ids

    @classmethod
    def load(cls, path: str | Path) -> "WikiTokenizer":
        """Load from a tokenizer.json file or a directory that holds one."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}; materialize the `tokenizer` asset first")
        return cls(Tokenizer.from_file(str(path)))

    @property
    def backend(self) -> Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_raw(self, text: str) -> list[int]:
        """A raw prompt's ids: special-token text (e.g. "<|end|>") becomes its special id, as
        the release's tokenizer does in transformers and vLLM. Never use it for chat content."""
        return self._raw.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character span of each token `encode(text)` gives."""
        return self._tok.encode(text, add_special_tokens=False).offsets

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
