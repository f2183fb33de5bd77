"""Speed per core of the cleaning's language filter (py3langid), against the English
function-word ratio it replaced, on the same article texts in the same process.

    python benchmarks/language_id.py [--rounds 3] [--json out.json]

Texts: the articles of the real gensim enwiki sample (extracted as the cleaning does, > 500
characters) and the Bulgarian article of gensim's bgwiki sample. Both methods look at the same
prefix of each text (the filter's 1,000 characters); timed over `--rounds` passes after one warm
pass, one core (OMP/BLAS threads pinned to 1). Printed: articles/s and MB of prefix text/s for
each, the ratio, the model's load time (paid once per worker process), and the decision each
makes on the Bulgarian article for target `en` (the old ratio can only say "English or not").
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from wikigpt_core.data import language as L  # noqa: E402
from wikigpt_core.data.extract import extract_article, skip_reason  # noqa: E402
from wikigpt_core.data.sources import sample_path  # noqa: E402
from wikigpt_core.data.xmlpages import iter_pages  # noqa: E402

# The stopword test the filter used before (kept here only as the baseline).
_STOPWORDS = frozenset(
    """a about after all also an and any are as at be been but by can could did do does for
    from had has have he her his how i if in into is it its may more most no not of on one
    only or other our out over she should so some such than that the their them then there
    these they this those through to under up was we were what when where which while who will
    with would you""".split())
_WORD = re.compile(r"[^\W\d_]+")


def english_ratio(text: str) -> float:
    words = _WORD.findall(text.lower())
    return sum(w in _STOPWORDS for w in words) / len(words) if words else 0.0


def texts() -> tuple[list[str], str]:
    en = [extract_article(p).text for p in iter_pages(sample_path()) if skip_reason(p) is None]
    en = [t[: L.PREFIX_CHARS] for t in en if len(t) > 500]
    bg_page = next(iter_pages(sample_path().parent / "bgwiki-latest-pages-articles-shortened.xml.bz2"))
    return en, extract_article(bg_page).text[: L.PREFIX_CHARS]


def timed(fn, items: list[str], rounds: int) -> float:
    for t in items:  # warm
        fn(t)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for t in items:
            fn(t)
    return (time.perf_counter() - t0) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    L.language_probability("load", "en")
    load_s = time.perf_counter() - t0
    en, bg = texts()
    mb = sum(len(t.encode()) for t in en) / 1e6
    langid_s = timed(lambda t: L.language_probability(t, "en"), en, args.rounds)
    ratio_s = timed(english_ratio, en, args.rounds)
    fig = {
        "articles": len(en), "prefix_chars": L.PREFIX_CHARS, "prefix_mb": round(mb, 3),
        "py3langid_articles_per_s": round(len(en) / langid_s, 1),
        "py3langid_mb_per_s": round(mb / langid_s, 3),
        "stopword_ratio_articles_per_s": round(len(en) / ratio_s, 1),
        "stopword_ratio_mb_per_s": round(mb / ratio_s, 3),
        "py3langid_cost_vs_stopwords": round(langid_s / ratio_s, 2),
        "model_load_s": round(load_s, 2),
        "min_p_en_on_english": round(min(L.language_probability(t, "en") for t in en), 4),
        "bg_article_p_bg": round(L.language_probability(bg, "bg"), 4),
        "bg_article_p_en": round(L.language_probability(bg, "en"), 4),
        "bg_article_stopword_ratio": round(english_ratio(bg), 4),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_1m": round(os.getloadavg()[0], 2)},
    }
    print(f"language id on {len(en)} enwiki sample articles ({L.PREFIX_CHARS}-char prefixes, "
          f"{mb:.2f} MB), one core, {args.rounds} rounds:")
    print(f"  py3langid       {fig['py3langid_articles_per_s']:>8} articles/s  {fig['py3langid_mb_per_s']} MB/s")
    print(f"  stopword ratio  {fig['stopword_ratio_articles_per_s']:>8} articles/s  {fig['stopword_ratio_mb_per_s']} MB/s")
    print(f"  py3langid costs {fig['py3langid_cost_vs_stopwords']}x the stopword ratio per article; "
          f"model load {fig['model_load_s']} s per worker")
    print(f"  English articles: lowest p(en) {fig['min_p_en_on_english']}; Bulgarian article: "
          f"p(bg) {fig['bg_article_p_bg']}, p(en) {fig['bg_article_p_en']}")
    print(f"  machine: {fig['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)


if __name__ == "__main__":
    main()
