"""Small real dumps for the data tests, built from the gensim enwiki sample."""
from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from wikigpt_core.config import load_settings
from wikigpt_core.data.builddump import split_dump, write_multistream

MS_NAME = "enwiki-20990101-pages-articles-multistream"


@pytest.fixture(scope="session")
def sample_split():
    """(header, [raw page XML]) of the real sample."""
    return split_dump()


@pytest.fixture()
def settings():
    return load_settings("tiny")


def make_multistream(dest: Path, header: bytes, pages: list[bytes], per_stream: int = 25,
                     name: str = MS_NAME) -> tuple[Path, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    xml, index = dest / f"{name}.xml.bz2", dest / f"{name}-index.txt.bz2"
    write_multistream(header, pages, xml, index, pages_per_stream=per_stream)
    return xml, index


def make_single(dest: Path, xml_text: bytes, name: str = "enwiki-20990101-pages-articles.xml.bz2") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / name
    path.write_bytes(bz2.compress(xml_text))
    return path
