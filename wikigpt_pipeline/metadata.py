"""Turn a stage's stats into Dagster metadata the UI can plot and render.

Ints and floats stay numbers (the UI plots them across materializations); a dict of numbers
becomes a table; a list of dicts becomes a table; a list of strings becomes a markdown list.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from wikigpt_core.artifacts import StageResult

PATH_KEY = "path"
"""A materialization's metadata entry naming the version folder it recorded (checks read it)."""


def to_metadata(stats: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in stats.items():
        converted = _convert(key, value)
        if converted is not None:
            out[key] = converted
    return out


def _convert(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            return dg.MetadataValue.url(value)
        if "\n" in value:
            return dg.MetadataValue.md(value)
        return dg.MetadataValue.text(value)
    if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
        return _table([{"name": str(k), "value": v} for k, v in value.items()])
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _table(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return dg.MetadataValue.md("\n".join(f"- {_md_escape(v)}" for v in value))
    if value is None or value == [] or value == {}:
        return None
    return dg.MetadataValue.json(value)


def _table(rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _column_type(rows, c)) for c in columns])
    records = [dg.TableRecord({c: _cell(row.get(c)) for c in columns}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


def _column_type(rows: list[dict[str, Any]], column: str) -> str:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "float"
    return "string"


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("\n", " ")


def materialize_result(result: StageResult, extra: dict[str, Any] | None = None) -> dg.MaterializeResult:
    """Metadata (`path` first, then the stage's figures) and DataVersion = artifact content hash."""
    metadata = {PATH_KEY: dg.MetadataValue.path(str(Path(result.path)))}
    metadata |= to_metadata(result.stats)
    metadata |= extra or {}
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.content_hash))
