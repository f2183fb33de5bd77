"""Turning generated ids into text as they arrive: UTF-8-safe, and cut at stop strings.

A byte-level BPE token can hold half of a multi-byte character; decoding it alone yields
U+FFFD. So the whole generated sequence is decoded each step, only the new suffix is emitted,
and nothing is emitted while the text ends in U+FFFD (the next token usually completes it).
Stop strings: the text is cut where the first one begins, and text that might still turn out
to be the start of a stop string is held back, so a stream never shows any part of one.
"""
from __future__ import annotations

from functools import lru_cache

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


class StopText:
    """Incremental text with stop strings. `push` returns (delta, stopped): once a stop string
    appears, the text ends just before it and `stopped` is True."""

    def __init__(self, tok: WikiTokenizer, stop: tuple[str, ...] = ()) -> None:
        self._decoder = IncrementalDecoder(tok)
        self._stop = tuple(s for s in stop if s)
        self.text = ""  # everything decoded so far (cut at the stop string once one appears)
        self.decoded = 0  # characters decoded so far, before any stop cut
        self.sent = 0  # characters of `text` already returned
        self.stopped = False

    def push(self, token_id: int) -> tuple[str, bool]:
        self._grow(self._decoder.push(token_id))
        return self._release(final=False), self.stopped

    def finish(self) -> str:
        """The rest of the text once generation has ended for any other reason."""
        if not self.stopped:
            self._grow(self._decoder.finish())
        return self._release(final=True)

    def _grow(self, delta: str) -> None:
        self.text += delta
        self.decoded += len(delta)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        if self._stop:
            # Sent text never holds the start of a stop string (it is held back), so a stop
            # string can only begin in the unsent part.
            hits = [i for i in (self.text.find(s, self.sent) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                end = min(hits)
            elif not final:
                end -= self._held_back()
        delta = self.text[self.sent:max(end, self.sent)]
        self.sent += len(delta)
        if self.stopped:
            self.text = self.text[:end]
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> the byte it stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tok: WikiTokenizer, token_id: int) -> bytes:
    """The raw bytes a token stands for (a special token: its UTF-8 name)."""
    piece = tok.backend.id_to_token(token_id) or ""
    table = _byte_decoder()
    if token_id < 4 or not all(ch in table for ch in piece):
        return piece.encode("utf-8")
    return bytes(table[ch] for ch in piece)


def token_text(tok: WikiTokenizer, token_id: int) -> str:
    """A token as a string for logprob listings (invalid UTF-8 bytes become U+FFFD)."""
    return token_bytes(tok, token_id).decode("utf-8", errors="replace")
