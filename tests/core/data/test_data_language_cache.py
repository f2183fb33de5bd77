"""The unpacked-model cache of the language identifier builds the same identifier as the
wheel's own loader, and the same probabilities."""
from __future__ import annotations

import pytest

from wikigpt_core.data import language


def _fields(ident) -> dict:
    return {k: getattr(ident, k) for k in ("nb_classes", "tk_nextmove", "tk_row", "tk_output")}


def test_cached_identifier_equals_the_wheel_loader(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path))
    official = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    first = language._unpacked_identifier(MODEL_DIR / MODEL_FILE, LanguageIdentifier)  # writes the cache
    cached = list(language.model_cache_dir().glob("model-*.npz"))
    assert len(cached) == 1 and not list(language.model_cache_dir().glob(".*.tmp"))
    again = language._unpacked_identifier(MODEL_DIR / MODEL_FILE, LanguageIdentifier)  # reads it
    for ident in (first, again):
        assert _fields(ident) == _fields(official)
        assert np.array_equal(ident.nb_ptc, official.nb_ptc) and ident.nb_ptc.dtype == official.nb_ptc.dtype
        assert np.array_equal(ident.nb_pc, official.nb_pc)
        for text in ("The river flows north of the city.", "Der Fluss fließt nördlich der Stadt.",
                     "Реката тече северно от града.", "12345 !!"):
            assert np.array_equal(ident._decide(text), official._decide(text))


def test_unwritable_cache_falls_back_to_the_wheel_loader(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("WIKIGPT_HOME", str(blocker))
    language._identifier.cache_clear()
    try:
        assert language.language_probability("The river flows north of the city and the sea.", "en") > 0.9
    finally:
        language._identifier.cache_clear()
