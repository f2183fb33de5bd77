"""Small text utilities shared by the offline teacher and judge, the data filters and the eval
harness."""
from __future__ import annotations

import re
import string

# Common English function words: the language heuristic and the "content word" test.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
""".split())

_ABBREV = ("St", "Mr", "Mrs", "Ms", "Dr", "Jr", "Sr", "Prof", "Gen", "Col", "Lt", "Mt", "No",
           "vs", "c", "ca", "e.g", "i.e", "U.S", "U.K", "approx", "Inc", "Ltd", "Co")
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
_PAREN = re.compile(r"\s*\([^()]*\)")


def sentences(text: str) -> list[str]:
    """Split into sentences; a period after a common abbreviation or an initial is not an end."""
    out: list[str] = []
    for para in re.split(r"\n+", text):
        para = para.strip()
        if not para:
            continue
        start = 0
        for m in _SENT_END.finditer(para):
            head = para[start:m.start()].rstrip()
            last = head.rsplit(" ", 1)[-1].rstrip(".!?\"')]")
            if last in _ABBREV or (len(last) == 1 and last.isupper()):
                continue
            out.append(para[start:m.start()].strip())
            start = m.end()
        tail = para[start:].strip()
        if tail:
            out.append(tail)
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def content_words(text: str) -> list[str]:
    """Lowercased words that are not function words and longer than two characters."""
    return [w for w in (x.lower() for x in words(text)) if w not in STOPWORDS and len(w) > 2]


def english_ratio(text: str) -> float:
    """Share of words that are common English function words (English prose: ~0.35-0.55)."""
    ws = [w.lower() for w in words(text)]
    return sum(w in STOPWORDS for w in ws) / len(ws) if ws else 0.0


def grounding(response: str, source: str) -> float:
    """Share of the response's content words that also occur in the source (1.0 if none)."""
    cw = content_words(response)
    if not cw:
        return 1.0
    src = set(content_words(source))
    # Light stemming so "founded"/"founding" or plural forms still count as grounded.
    stems = {w[:6] for w in src}
    return sum(w in src or w[:6] in stems for w in cw) / len(cw)


def strip_parentheticals(text: str) -> str:
    prev = None
    while prev != text:
        prev, text = text, _PAREN.sub("", text)
    return re.sub(r"\s+([,.;:])", r"\1", text).strip()


def truncate_words(text: str, n: int) -> str:
    ws = text.split()
    return text if len(ws) <= n else " ".join(ws[:n]).rstrip(",;:") + "."


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’–—"})


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, articles removed, single spaces (answer matching)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def distinct3(text: str) -> float:
    """Unique word trigrams / all word trigrams; 1.0 when there are fewer than three words."""
    ws = text.lower().split()
    grams = [tuple(ws[i:i + 3]) for i in range(len(ws) - 2)]
    return len(set(grams)) / len(grams) if grams else 1.0
