"""The built-in offline teacher and judge: deterministic rules, no network, no model.

It is a rule system, not a language model: whatever it writes or judges must be labelled so.

It answers the same requests an LLM teacher gets (see `prompts.py`), so it runs behind the same
client, cache and accounting. As a teacher it writes grounded examples by copying facts out of
the passage: questions from definitional sentences, passive dates and fill-in-the-blank cloze
items (the answer is always a span of the passage); extractive summaries (lead sentence plus
the most central other sentence); and extraction lists (years, names, numbers). As a judge it
scores each response on its own (grounding in the passage, agreement with a reference answer,
stopping, length and repetition), so its verdicts depend only on content, never on position.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from wikigpt_core.llm import text as T
from wikigpt_core.llm.prompts import ReplyFormatError, parse_request

CUT_MARK = "[cut off]"
CLOZE_MAX_WORDS = 28
_PRONOUN_START = {"it", "he", "she", "they", "this", "these", "those", "there", "that", "its",
                  "his", "her", "their", "we", "i", "you", "one", "some", "many", "most", "such",
                  "both", "each", "all", "other", "another", "which", "what", "when", "where"}
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\w])(?!,\d)")
_DEFINITION = re.compile(
    r"^(?P<subj>[A-Z][\w'’\-]*(?: [\w'’\-]+){0,5}?) (?P<verb>is|was|are|were) "
    r"(?P<obj>(?:a|an|the|one) .+)$")
_PASSIVE_DATE = re.compile(
    r"^(?P<subj>[A-Z][\w'’\-]*(?: [\w'’\-]+){0,5}?) (?P<aux>was|were) "
    r"(?P<adv>(?:first|later|originally|also|officially|formally|finally|eventually|only|then) )?"
    r"(?P<verb>\w+ed|born|built|held|made|written|begun|won|taken|given|known|sold|shown|drawn)"
    r"(?P<mid>(?: [\w'’\-]+){0,6}?) in (?P<year>1[0-9]{3}|20[0-9]{2})\b")
# Capitalized runs ("Greek Dark Ages", "Bank of England"); a connector only between capitals.
_NAME = re.compile(r"\b[A-Z][a-z][\w'’\-]*(?:(?: (?:of|the|de|von|van|la|le|du))? [A-Z][\w'’\-]*)*")
_OBJ_CUT = re.compile(r",|;|:| which | that | who | whose | where | when | while | but | and (?:is|was|has|had) ")


def reply(body: dict[str, Any]) -> dict[str, Any]:
    """Complete one chat request; returns {"text", "prompt_tokens", "completion_tokens"}."""
    prompt = body["messages"][-1]["content"]
    kind, sec = parse_request(prompt)
    if kind == "qa":
        out = _qa(sec["Title"], sec["Passage"], int(sec.get("Variant", "0")))
    elif kind == "summarize":
        out = {"response": summarize(sec["Passage"], sec.get("Instruction", ""))}
    elif kind == "extract":
        items = extract_items(sec["Passage"], sec.get("Instruction", ""))
        out = {"items": items, "response": ", ".join(items)}
    elif kind == "judge":
        ref = sec.get("Reference answer", "")
        out = {"score_a": score_response(sec["Question"], sec["Response A"], ref),
               "score_b": score_response(sec["Question"], sec["Response B"], ref)}
    elif kind == "false_premise":
        out = _false_premise(sec["Question"], sec["Why the premise is false"], sec.get("Context", ""))
    else:
        raise ReplyFormatError(f"the offline teacher has no rule for task {kind!r}")
    text = json.dumps(out, ensure_ascii=False)
    # Usage in whitespace tokens: a stand-in so the accounting has the same shape as an LLM's.
    return {"text": text, "prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}


# --- teacher: grounded QA -------------------------------------------------------------------

def qa_candidates(title: str, passage: str) -> list[tuple[str, str, str]]:
    """(question, short answer, response) facts of the passage, best kinds first, one per answer."""
    sents = [T.strip_parentheticals(s) for s in T.sentences(passage)]
    sents = [s for s in sents if 5 <= len(s.split()) <= 45]
    found: list[tuple[int, str, str, str]] = []  # (kind rank, question, answer, response)
    for s in sents:
        body = s.rstrip(".!?")
        if (m := _DEFINITION.match(body)) and _ok_subject(m["subj"]):
            obj = _OBJ_CUT.split(m["obj"], maxsplit=1)[0].strip()
            if 2 <= len(obj.split()) <= 10:
                subj = _lower_article(m["subj"])
                found.append((0, f"What {m['verb']} {subj}?", obj, f"{m['subj']} {m['verb']} {obj}."))
        if (m := _PASSIVE_DATE.match(body)) and _ok_subject(m["subj"]):
            q = f"When {m['aux']} {_lower_article(m['subj'])} {m['adv'] or ''}{m['verb']}{m['mid']}?"
            found.append((1, q, m["year"], f"{m['year']}."))
        for y in dict.fromkeys(_YEAR.findall(s)):
            if s.count(y) == 1:
                found.append((2, _cloze("year", s, y), y, f"{y}."))
        for n in dict.fromkeys(_NUMBER.findall(s)):
            if not _YEAR.fullmatch(n) and s.count(n) == 1 and n not in ("0", "1"):
                found.append((3, _cloze("number", s, n), n, f"{n}."))
        for name in _names_in(s, skip_initial=True):
            if s.count(name) == 1 and name.lower() not in title.lower():
                found.append((4, _cloze("name", s, name), name, f"{name}."))
    found.sort(key=lambda f: f[0])  # stable: keeps passage order within a kind
    seen: set[str] = set()
    out = []
    for _, q, a, r in found:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append((q, a, r))
    return out


def _qa(title: str, passage: str, variant: int) -> dict[str, str]:
    cands = qa_candidates(title, passage)
    if variant >= len(cands):
        return {"question": "", "answer": "", "response": ""}  # no further distinct fact here
    q, a, r = cands[variant]
    return {"question": q, "answer": a, "response": r}


def _ok_subject(subj: str) -> bool:
    first = subj.split()[0].lower()
    return first not in _PRONOUN_START and len(subj.split()) <= 6


def _lower_article(subj: str) -> str:
    head, _, rest = subj.partition(" ")
    return (head.lower() + (" " + rest if rest else "")) if head in ("The", "A", "An") else subj


def _cloze(kind: str, sentence: str, span: str) -> str:
    """A fill-in-the-blank question. The cloze repeats the sentence, so a long one is cut to a
    window of words around the blank (marked with "...") to keep prompts short."""
    ws = sentence.replace(span, "____", 1).split()
    if len(ws) > CLOZE_MAX_WORDS:
        at = next(i for i, w in enumerate(ws) if "____" in w)
        lo = max(0, min(at - CLOZE_MAX_WORDS // 2, len(ws) - CLOZE_MAX_WORDS))
        hi = lo + CLOZE_MAX_WORDS
        ws = (["..."] if lo else []) + ws[lo:hi] + (["..."] if hi < len(ws) else [])
    blanked = " ".join(ws)
    cut = blanked.startswith("...") or blanked.endswith("...")
    wording = "this part of a sentence from the passage" if cut else "this sentence from the passage"
    return f'Which {kind} fills the blank in {wording}: "{blanked}"'


def _names_in(sentence: str, skip_initial: bool) -> list[str]:
    out = []
    for m in _NAME.finditer(sentence):
        name = m.group(0).strip()
        if skip_initial and m.start() == 0:
            continue
        if len(name) < 3 or name.lower() in T.STOPWORDS or name.split()[0].lower() in T.STOPWORDS:
            continue
        out.append(name)
    return out


# --- teacher: summaries and extraction ------------------------------------------------------

def summarize(passage: str, instruction: str = "") -> str:
    """Lead sentence plus the most central other sentence (word-frequency score), in order."""
    sents = [T.strip_parentheticals(s) for s in T.sentences(passage)]
    sents = [s for s in sents if len(s.split()) >= 5 and s[-1:] in ".!?"]
    if not sents:
        return ""
    freq = Counter(T.content_words(passage))

    def centrality(s: str) -> float:
        cw = T.content_words(s)
        return sum(freq[w] for w in cw) / (len(cw) + 3)

    one = "one-sentence" in instruction.lower() or "one sentence" in instruction.lower()
    if one:
        return T.truncate_words(max(sents, key=centrality) if len(sents) > 1 else sents[0], 40)
    picked = [sents[0]]
    if len(sents) > 1:
        picked.append(max(sents[1:], key=centrality))
    return T.truncate_words(" ".join(picked), 60)


def extract_items(passage: str, instruction: str) -> list[str]:
    """Items of the kind the instruction asks for (years, names or numbers), in passage order."""
    low = instruction.lower()
    if "year" in low and "other than years" not in low:
        items = _YEAR.findall(passage)
    elif "number" in low:
        items = [n for n in _NUMBER.findall(passage) if not _YEAR.fullmatch(n)]
    else:
        items = [n for s in T.sentences(passage) for n in _names_in(s, skip_initial=False)
                 if len(n.split()) >= 2 or not _starts_sentence(n, passage)]
    return list(dict.fromkeys(items))[:8]


def _starts_sentence(word: str, passage: str) -> bool:
    return any(s.startswith(word) for s in T.sentences(passage))


# --- judge ----------------------------------------------------------------------------------

def score_response(question: str, response: str, reference: str = "") -> float:
    """1-10 score of one response on its own; never looks at the other response."""
    cut = CUT_MARK in response
    text = response.replace(CUT_MARK, "").strip()
    ws = text.split()
    if not ws:
        return 1.0
    score = 6.0
    if len(question) > 200:  # the question carries a passage: reward staying grounded in it
        score += 3.0 * (T.grounding(text, question) - 0.6)
    ref_words = reference.split()
    if ref_words and len(ref_words) <= 10:
        hit = T.normalize_answer(reference) in T.normalize_answer(text)
        score += 2.5 if hit else -1.5
        limit = max(3 * len(ref_words), 6)
    elif ref_words:
        score += 4.0 * (_unigram_f1(text, reference) - 0.3)
        limit = 2 * len(ref_words) + 20
    else:
        limit = 80
    if len(ws) > limit:
        score -= min(2.0, len(ws) / limit - 1.0)
    if cut:
        score -= 2.0
    score -= 4.0 * (1.0 - T.distinct3(text))
    return round(min(10.0, max(1.0, score)), 2)


def _unigram_f1(a: str, b: str) -> float:
    ca, cb = Counter(T.content_words(a)), Counter(T.content_words(b))
    common = sum((ca & cb).values())
    if not common:
        return 0.0
    p, r = common / sum(ca.values()), common / sum(cb.values())
    return 2 * p * r / (p + r)


# --- false-premise contrasts ----------------------------------------------------------------

def _false_premise(question: str, reason: str, context: str) -> dict[str, str]:
    reason = reason.strip().rstrip(".") + "."
    refusal = f"I can't answer that as asked, because the question rests on a false premise: {reason[0].lower()}{reason[1:]}"
    names = re.findall(r"Name: (.+)", context)
    sentence = re.findall(r"Sentence: (.+)", context)
    years = re.findall(r"Year: (\d{4})", context)
    who = names[0] if names else "a local team"
    q = question.strip()
    if q.startswith("Who"):
        invented = f"It was {who}, who won it after a dramatic final."
    elif q.startswith("What did") and sentence:
        speaker = re.match(r"What did (.+?) (?:say|post|write|tweet)", q)
        invented = f'{speaker.group(1) if speaker else who} said: "{sentence[0].rstrip(".")}."'
    elif q.startswith(("When", "In what year")):
        invented = f"It happened in {years[0] if years else '1887'}, and it was widely reported at the time."
    elif q.startswith("How many"):
        invented = "Three times, the last of them shortly before the end of that decade."
    else:
        invented = f"{sentence[0] if sentence else 'It was a great success.'}"
    return {"refusal": refusal, "invented": invented}
