"""Search filters: a SQL predicate (run by DataFusion, through ``deltalake.QueryBuilder``) or a
dict of equalities, turned into the ids of the live rows that match."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder

from ..errors import InvalidFilterError
from .schema import BASE_SCHEMA

TOP_LEVEL = frozenset(BASE_SCHEMA.names) - {"vector"}


def predicate(where: str | dict[str, Any]) -> str:
    """The SQL predicate of ``where``: a string as given, a dict as ``AND``-ed equalities.

    Dict keys are the columns ``id``, ``source``, ``modality``, ``model``, ``created_at`` or a
    metadata key; values are str, int, float, bool or None (``IS NULL``).
    """
    if isinstance(where, str):
        if not where.strip():
            raise InvalidFilterError("where is empty; pass a SQL predicate such as \"lang = 'en'\"")
        return where
    if not isinstance(where, dict) or not where:
        raise InvalidFilterError(
            f"where must be a SQL predicate (str) or a non-empty dict of equalities, got "
            f"{type(where).__name__}"
        )
    return " AND ".join(_equality(k, v) for k, v in where.items())


def _equality(key: Any, value: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidFilterError(f"where keys must be column or metadata names, got {key!r}")
    column = f'"{key}"' if key in TOP_LEVEL else f"metadata[{_literal(key)}]"
    if value is None:
        return f"{column} IS NULL"
    return f"{column} = {_literal(value)}"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise InvalidFilterError(
        f"where values must be str, int, finite float, bool or None, got {value!r}"
    )


def is_in(column: str, values: list[str]) -> str:
    """``"column" IN ('a', 'b')`` with the values quoted."""
    return f'"{column}" IN (' + ", ".join(_literal(v) for v in values) + ")"


def select(table: DeltaTable, sql_predicate: str, columns: str = "*") -> pa.Table:
    """The rows of ``table`` (at its loaded version) that satisfy a SQL predicate."""
    sql = f"SELECT {columns} FROM t WHERE {sql_predicate}"
    result = pa.table(QueryBuilder().register("t", table).execute(sql).read_all())
    schema = pa.schema(table.schema().to_arrow())  # DataFusion answers with string_view
    return result.cast(pa.schema([schema.field(name) for name in result.column_names]))


def matching_ids(table: DeltaTable, where: str | dict[str, Any], name: str) -> pa.Array:
    """Ids of the rows of ``table`` (at its loaded version) that satisfy ``where``."""
    try:
        return select(table, predicate(where), "id").column("id").combine_chunks()
    except Exception as e:  # DataFusion raises plain Exceptions for SQL errors
        columns = [f.name for f in pa.schema(table.schema().to_arrow())]
        raise InvalidFilterError(
            f"the where filter {where!r} is not a valid SQL predicate over the {name} table "
            f"(columns {columns}; metadata keys as metadata.key or metadata['key']): "
            f"{str(e).splitlines()[0][:300]}"
        ) from e
