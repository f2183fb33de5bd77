"""Where dumps come from and how a dump artifact's files are recognised."""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from wikigpt_core.data.errors import EmptyDumpError, MissingIndexError

SAMPLE_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_DUMP_NAME = re.compile(r"^(?P<wiki>[a-z_]+wiki)/(?P<date>\d{8}|latest)$")


def sample_path() -> Path:
    """The real enwiki sample shipped inside the gensim wheel (206 pages, single-stream bz2)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dump source `sample` needs the gensim package (it ships the enwiki sample); "
            "install the project's dependencies or set WIKIGPT_DUMP to a local .xml.bz2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / SAMPLE_NAME
    if not path.exists():
        raise FileNotFoundError(f"the gensim wheel has no {path}; reinstall gensim")
    return path


def parse_dump_name(source: str) -> tuple[str, str] | None:
    """`enwiki/20261101` -> ("enwiki", "20261101"); None when source is not a dump name."""
    m = _DUMP_NAME.match(source)
    return (m["wiki"], m["date"]) if m else None


def multistream_names(wiki: str, date: str) -> tuple[str, str]:
    """File names of a dump's multistream file and its index on dumps.wikimedia.org."""
    stem = f"{wiki}-{date}-pages-articles-multistream"
    return f"{stem}.xml.bz2", f"{stem}-index.txt.bz2"


def index_for(xml: Path) -> Path:
    """The index path that belongs beside a multistream file."""
    name = xml.name
    for suffix in (".xml.bz2", ".xml"):
        if name.endswith(suffix):
            return xml.with_name(name[: -len(suffix)] + "-index.txt.bz2")
    return xml.with_name(name + "-index.txt.bz2")


def is_multistream_name(path: Path) -> bool:
    return "multistream" in path.name and not path.name.endswith("-index.txt.bz2")


@dataclass(frozen=True)
class DumpFiles:
    """A dump file and, for multistream dumps, its index."""

    xml: Path
    index: Path | None


def find_dump_files(dump_dir: Path) -> DumpFiles:
    """Locate the dump inside a `wiki_dump` artifact directory (or any directory)."""
    dump_dir = Path(dump_dir)
    candidates = sorted(
        p for p in dump_dir.iterdir()
        if p.is_file() and (p.name.endswith(".bz2") or p.name.endswith(".xml"))
        and not p.name.endswith("-index.txt.bz2")
    ) if dump_dir.is_dir() else []
    if not candidates:
        raise EmptyDumpError(dump_dir, "no *.xml.bz2 dump file in this directory")
    if len(candidates) > 1:
        raise ValueError(f"{dump_dir}: more than one dump file ({[p.name for p in candidates]}); keep one")
    xml = candidates[0]
    index = index_for(xml)
    if index.exists():
        return DumpFiles(xml, index)
    if is_multistream_name(xml):
        raise MissingIndexError(xml, index.name)
    return DumpFiles(xml, None)
