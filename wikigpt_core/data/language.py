"""The target language of a dump, and the language identifier the filters use.

Target language: the dump's wiki tells it (`dewiki/20261101` → de, `simplewiki` → en, the
embedded `sample` is enwiki, a local `bgwiki-…xml.bz2` → bg, else the `<dbname>` or `xml:lang`
of the file's <siteinfo>); `CleanConfig.language` overrides it. The cleaning stage writes the
language it filtered for into its artifact (`language.txt`, hashed like any data file), and the
dedup stage carries it on, so every later stage reads it with `artifact_language(dir)` and a
changed language reaches their DataVersions.

Identifier: py3langid (the langid.py model, 97 languages, numpy; the model ships inside the
wheel as an `.npz.xz`, loaded without pickle, nothing is downloaded). It scores a prefix of the
text; an article is kept when the normalized probability of the target language reaches
`CleanConfig.min_language_prob`. Measured speed: `benchmarks/language_id.py`.

Unpacking the LZMA-compressed model costs every process (each cleaning worker) ~0.5 CPU-second,
so the first process keeps the unpacked `.npz` (~70 MB) under `$WIKIGPT_HOME/_cache/py3langid/`,
keyed by the SHA-1 of the wheel's model file; later processes load that in ~0.15 s. Same arrays,
same identifier (a test checks them against the wheel's own loader); when the cache cannot be
written or read, the wheel's loader is used.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

LANGUAGE_FILE = "language.txt"
"""One line, the ISO 639-1 code the corpus was filtered for; inside cleaned/deduped artifacts."""
DEFAULT_LANGUAGE = "en"
PREFIX_CHARS = 1_000
"""Characters of an article the identifier reads (a prefix tells the language; cost stays flat)."""

# Wikis whose database name is not `<ISO 639-1 code>wiki`.
_WIKI_LANGUAGE = {
    "simple": "en",
    "be_x_old": "be",
    "zh_min_nan": "nan",
    "zh_yue": "yue",
    "zh_classical": "lzh",
    "als": "gsw",
    "nds_nl": "nds",
    "roa_rup": "rup",
}
_WIKI_DB = re.compile(r"^(?P<code>[a-z][a-z_]*?)wiki$")
_FILE_WIKI = re.compile(r"^(?P<wiki>[a-z][a-z_]*wiki)-")


def wiki_language(wiki: str) -> str | None:
    """`dewiki` → "de", `simplewiki` → "en"; None for a name that is not `<code>wiki`."""
    m = _WIKI_DB.match(wiki)
    if not m:
        return None
    code = m["code"]
    return _WIKI_LANGUAGE.get(code, code.replace("_", "-"))


def language_from_filename(name: str) -> str | None:
    """`bgwiki-latest-pages-articles.xml.bz2` → "bg"; None when the name does not say."""
    m = _FILE_WIKI.match(name)
    return wiki_language(m["wiki"]) if m else None


def resolve_language(override: str, *candidates: str | None) -> str:
    """The configured override if set, else the first known candidate, else English."""
    if override.strip():
        return override.strip().lower()
    for c in candidates:
        if c:
            return c
    return DEFAULT_LANGUAGE


def write_language(artifact_dir: Path, language: str) -> None:
    (Path(artifact_dir) / LANGUAGE_FILE).write_text(language + "\n")


def artifact_language(artifact_dir: Path) -> str:
    """The language a cleaned/deduped corpus was filtered for (English for artifacts written
    before the file existed)."""
    path = Path(artifact_dir) / LANGUAGE_FILE
    return path.read_text().strip() if path.exists() else DEFAULT_LANGUAGE


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    try:
        return _unpacked_identifier(MODEL_DIR / MODEL_FILE, LanguageIdentifier)
    except (OSError, ValueError, KeyError, ImportError, AttributeError):
        return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def model_cache_dir() -> Path:
    home = Path(os.environ.get("WIKIGPT_HOME", Path.home() / ".wikigpt")).expanduser()
    return home / "_cache" / "py3langid"


def _unpacked_identifier(model: Path, identifier_cls):
    """The identifier `identifier_cls.from_model_file(model, norm_probs=True)` builds, read
    from the unpacked model in the cache (written first if missing)."""
    import lzma
    import shutil

    import numpy as np
    from py3langid.modelio import _to_array

    cached = model_cache_dir() / f"model-{hashlib.sha1(model.read_bytes()).hexdigest()[:16]}.npz"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        try:
            with lzma.open(model) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(tmp, cached)  # atomic: concurrent workers each write their own tmp
        finally:
            tmp.unlink(missing_ok=True)
    with np.load(cached, allow_pickle=False) as data:  # the layout py3langid's load_model reads
        ptc, pc, classes = data["ptc"], data["pc"], data["classes"].tolist()
        nextmove, row = _to_array(data["nextmove"]), _to_array(data["nextmove_row"])
        output = data["out_feat"].tolist()
    return identifier_cls(np.asarray(ptc), np.asarray(pc), classes, nextmove, output, norm_probs=True, tk_row=row)


def supported_languages() -> frozenset[str]:
    return frozenset(_identifier().labels)


def check_supported(language: str) -> None:
    """Raise a clear error for a target the identifier cannot recognise."""
    if language not in supported_languages():
        raise ValueError(
            f"target language {language!r} is not one of the {len(supported_languages())} languages "
            "py3langid identifies; set CleanConfig.min_language_prob = 0 to keep every article "
            "without a language check, or set CleanConfig.language to a supported code")


def language_probability(text: str, language: str, prefix_chars: int = PREFIX_CHARS) -> float:
    """Normalized probability (0-1) that the text's prefix is written in `language`."""
    sample = text[:prefix_chars]
    if not sample.strip():
        return 0.0
    ident = _identifier()
    scores = ident._decide(sample)  # one pass over all classes; rank() would sort 97 labels
    i = ident.nb_classes.index(language)
    return float(scores[i])


def identify(text: str, prefix_chars: int = PREFIX_CHARS) -> tuple[str, float]:
    """(best language, its probability) for the text's prefix."""
    return _identifier().classify(text[:prefix_chars])
