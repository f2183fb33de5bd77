"""Any language: the target follows the dump, py3langid filters for it, and gensim's real
Bulgarian sample (a UTF-16 file) is read, kept for target bg and dropped for target en."""
from __future__ import annotations

import bz2
import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from wikigpt_core.data.clean import run_clean
from wikigpt_core.data.dump import run_dump
from wikigpt_core.data.errors import NothingKeptError, UnsupportedEncodingError
from wikigpt_core.data.language import artifact_language, language_from_filename, wiki_language
from wikigpt_core.data.sources import sample_path
from wikigpt_core.data.xmlpages import iter_pages, sniff_encoding

BG_NAME = "bgwiki-latest-pages-articles-shortened.xml.bz2"
BG_ARTICLE = "Григориански календар"


@pytest.fixture(scope="module")
def bg_sample() -> Path:
    path = sample_path().parent / BG_NAME
    assert path.exists(), f"gensim ships {BG_NAME}"
    return path


@pytest.fixture()
def bg_dump(settings, bg_sample, tmp_path) -> Path:
    cfg = dataclasses.replace(settings.dump, source=str(bg_sample))
    result = run_dump(cfg, tmp_path / "wiki_dump", tmp_path / "work_dump")
    # The file is UTF-16; it is read as such, not mistaken for an empty dump.
    assert result.stats["pages"] == 3
    assert result.stats["dump_date"] == "2017-04-10"
    return result.path


def test_target_language_from_dump_names():
    assert wiki_language("dewiki") == "de"
    assert wiki_language("frwiki") == "fr"
    assert wiki_language("simplewiki") == "en"
    assert wiki_language("zh_yuewiki") == "yue"
    assert wiki_language("commons") is None
    assert language_from_filename("dewiki-20261101-pages-articles-multistream.xml.bz2") == "de"
    assert language_from_filename(BG_NAME) == "bg"


def test_bulgarian_sample_is_utf16_and_read(bg_sample):
    head = bz2.open(bg_sample).read(64)
    assert sniff_encoding(head) == "utf-16-le"
    titles = [p.title for p in iter_pages(bg_sample)]
    assert titles[0] == BG_ARTICLE and len(titles) == 3


def test_target_bg_keeps_the_bulgarian_article(settings, bg_dump, tmp_path):
    cfg = dataclasses.replace(settings.clean, workers=1)  # language: from the dump (bgwiki)
    result = run_clean(cfg, bg_dump, tmp_path / "cleaned", tmp_path / "work_clean")
    rows = pq.read_table(result.path / "articles.parquet").to_pylist()
    assert [r["title"] for r in rows] == [BG_ARTICLE]
    assert rows[0]["url"] == "https://bg.wikipedia.org/wiki/" + BG_ARTICLE.replace(" ", "_")
    assert "календар" in rows[0]["text"]
    assert result.stats["language"] == "bg" and result.stats["dropped_wrong_language"] == 0
    assert result.stats["dropped_namespace"] == 2
    assert artifact_language(result.path) == "bg"


def test_target_en_drops_the_bulgarian_article(settings, bg_dump, tmp_path):
    cfg = dataclasses.replace(settings.clean, workers=1, language="en")
    out = tmp_path / "cleaned"
    with pytest.raises(NothingKeptError) as info:
        run_clean(cfg, bg_dump, out, tmp_path / "work_clean")
    assert "wrong_language 1" in str(info.value) and "'en'" in str(info.value)
    assert not out.exists()


def test_english_sample_keeps_english_and_drops_it_for_bulgarian(settings, tmp_path):
    dump = run_dump(settings.dump, tmp_path / "wiki_dump", tmp_path / "w").path
    en = run_clean(dataclasses.replace(settings.clean, workers=1), dump, tmp_path / "en", tmp_path / "we")
    assert en.stats["language"] == "en" and en.stats["rows"] > 50
    assert en.stats["dropped_wrong_language"] <= 2
    with pytest.raises(NothingKeptError, match="wrong_language"):
        run_clean(dataclasses.replace(settings.clean, workers=1, language="bg"), dump,
                  tmp_path / "bg", tmp_path / "wb")


def test_utf16_big_endian_without_bom_is_read(bg_sample, tmp_path):
    text = bz2.open(bg_sample).read().decode("utf-16")
    path = tmp_path / "bgwiki-be.xml.bz2"
    path.write_bytes(bz2.compress(text.encode("utf-16-be")))
    assert [p.title for p in iter_pages(path)][0] == BG_ARTICLE


def test_unsupported_encoding_is_named(settings, bg_sample, tmp_path):
    text = bz2.open(bg_sample).read().decode("utf-16")
    path = tmp_path / "bgwiki-32.xml.bz2"
    path.write_bytes(bz2.compress(text.encode("utf-32")))
    cfg = dataclasses.replace(settings.dump, source=str(path))
    with pytest.raises(UnsupportedEncodingError, match="UTF-32-LE") as info:
        run_dump(cfg, tmp_path / "wiki_dump", tmp_path / "w")
    assert path.name in str(info.value) and "iconv" in str(info.value)
    with pytest.raises(UnsupportedEncodingError, match="UTF-32"):
        list(iter_pages(path))


def test_model_card_language_follows_the_corpus():
    from wikigpt_core.config import load_settings
    from wikigpt_core.release.model_card import render_model_card

    def card(lineage):
        return render_model_card(repo_name="r", model_cfg=load_settings("tiny").model, params=1,
                                 lineage=lineage, report={}, datasets=[])

    bg = card({"cleaned_articles": {"stats": {"language": "bg"}}})
    assert "language:\n- bg\n" in bg and "`bg` Wikipedia" in bg and "English only" not in bg
    assert "language:\n- en\n" in card({}) and "English only" in card({})


def test_multistream_dump_must_be_utf8(settings, bg_sample, tmp_path):
    from wikigpt_core.data.builddump import write_multistream

    text = bz2.open(bg_sample).read().decode("utf-16")
    head = text[: text.index("</siteinfo>") + len("</siteinfo>")]
    page = text[text.index("<page>"): text.index("</page>") + len("</page>")]
    xml = tmp_path / "bgwiki-20990101-pages-articles-multistream.xml.bz2"
    index = tmp_path / "bgwiki-20990101-pages-articles-multistream-index.txt.bz2"
    write_multistream(head.encode("utf-16"), [page.encode("utf-8")], xml, index)
    cfg = dataclasses.replace(settings.dump, source=str(xml))
    with pytest.raises(UnsupportedEncodingError, match="UTF-16") as info:
        run_dump(cfg, tmp_path / "wiki_dump", tmp_path / "w")
    assert "multistream dump must be UTF-8" in str(info.value)
