"""Article parquet files: one schema, zstd, bounded row groups, streamed in batches."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ARTICLE_SCHEMA = pa.schema(
    [("id", pa.int64()), ("title", pa.string()), ("url", pa.string()), ("text", pa.string())]
)
COMPRESSION = "zstd"


MAX_ROW_GROUP_BYTES = 8 << 20
"""A row group is also closed once its rows hold this many bytes, so memory stays bounded
when articles are long (writers and readers hold one row group at a time)."""


class RowGroupWriter:
    """Parquet writer that emits row groups of `row_group_size` rows or `max_bytes` bytes,
    whichever comes first, however the rows arrive; it holds at most one row group."""

    def __init__(self, path: Path, row_group_size: int, schema: pa.Schema = ARTICLE_SCHEMA,
                 max_bytes: int = MAX_ROW_GROUP_BYTES) -> None:
        self.path = Path(path)
        self.row_group_size = max(1, int(row_group_size))
        self.max_bytes = max_bytes
        self._pending_bytes = 0
        self.schema = schema
        self._writer = pq.ParquetWriter(self.path, schema, compression=COMPRESSION)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.write(b)
            return
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        while self._pending_rows >= self.row_group_size:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            head = table.slice(0, self.row_group_size)
            rest = table.slice(self.row_group_size)
            self._writer.write_table(head, row_group_size=self.row_group_size)
            self.rows += head.num_rows
            self._pending = rest.to_batches()
            self._pending_rows = rest.num_rows
            self._pending_bytes = rest.nbytes
        if self._pending_bytes >= self.max_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._pending_rows:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            self._writer.write_table(table, row_group_size=self.row_group_size)
            self.rows += table.num_rows
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def close(self) -> int:
        self._flush()
        self._writer.close()
        return self.rows

    def __enter__(self) -> "RowGroupWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()


def articles_table(rows: Iterable[tuple[int, str, str, str]]) -> pa.Table:
    ids, titles, urls, texts = [], [], [], []
    for i, t, u, x in rows:
        ids.append(i)
        titles.append(t)
        urls.append(u)
        texts.append(x)
    return pa.table({"id": ids, "title": titles, "url": urls, "text": texts}, schema=ARTICLE_SCHEMA)


def iter_batches(path: Path, batch_size: int = 1_000, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a parquet file in record batches (never the whole file in memory)."""
    pf = pq.ParquetFile(path)
    yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def num_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def find_parquet(directory: Path, name: str) -> Path:
    path = Path(directory) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; materialize the upstream asset first")
    return path
