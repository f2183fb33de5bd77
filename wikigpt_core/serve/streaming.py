"""UTF-8-safe incremental detokenization (SPEC §6).

A byte-level BPE token can hold half of a multi-byte character; decoding it alone yields
U+FFFD. So we decode the whole generated sequence each step, emit only the new suffix, and hold
back while the text ends in U+FFFD (the next token usually completes the character).
"""
from __future__ import annotations

from wikigpt_core.tokenizer import WikiTokenizer

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Feed token ids one by one; get back the text that became final with each."""

    def __init__(self, tok: WikiTokenizer) -> None:
        self._tok = tok
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith(REPLACEMENT):
            return ""  # an incomplete character: wait for the bytes that finish it
        return self._advance(text)

    def finish(self) -> str:
        """Final flush. A trailing partial character (generation stopped mid-character) can
        no longer be completed and is dropped rather than sent as U+FFFD."""
        return self._advance(self._tok.decode(self.ids, skip_special_tokens=True).rstrip(REPLACEMENT))

    def _advance(self, text: str) -> str:
        if text.startswith(self.emitted):
            delta = text[len(self.emitted):]
        else:  # decoding is prefix-stable for byte-level BPE; never re-send text if it is not
            delta = text[len(self.emitted):] if len(text) > len(self.emitted) else ""
        self.emitted += delta
        return delta
