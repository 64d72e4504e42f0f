"""Arrow field types (what pyogrio reads) → Postgres column types, and values for binary COPY.

| Arrow | Postgres |
|---|---|
| int8, int16, uint8 | smallint |
| int32, uint16 | integer |
| int64, uint32 | bigint |
| uint64, decimal | numeric |
| float16, float32 | real |
| float64 | double precision |
| bool | boolean |
| date32, date64 | date |
| time32, time64 | time |
| timestamp (no zone) | timestamp |
| timestamp with a zone | timestamptz |
| string (GDAL's JSON subtype: ``arrow.json`` extension) | jsonb |
| list, struct, map (GDAL's list fields) | jsonb |
| binary | bytea |
| string, anything else | text |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.types as pat


@dataclass(frozen=True)
class ColumnType:
    sql: str  # the column's type in CREATE TABLE
    copy_type: str  # the type name psycopg dumps COPY values with (set_types)
    convert: Callable[[list[Any]], list[Any]] | None = None  # Python values → what the dumper takes


def _json_values(values: list[Any]) -> list[Any]:
    return [None if v is None else json.loads(v) if isinstance(v, str) else v for v in values]


def _decimal_values(values: list[Any]) -> list[Any]:
    return [None if v is None else Decimal(v) for v in values]


def _text_values(values: list[Any]) -> list[Any]:
    # Postgres text cannot hold NUL; a value of another type (dictionary, null column) as its text.
    return [None if v is None else str(v).replace("\x00", "") for v in values]


SMALLINT = ColumnType("smallint", "int2")
INTEGER = ColumnType("integer", "int4")
BIGINT = ColumnType("bigint", "int8")
NUMERIC = ColumnType("numeric", "numeric", _decimal_values)
REAL = ColumnType("real", "float4")
DOUBLE = ColumnType("double precision", "float8")
BOOLEAN = ColumnType("boolean", "bool")
DATE = ColumnType("date", "date")
TIME = ColumnType("time", "time")
TIMESTAMP = ColumnType("timestamp", "timestamp")
TIMESTAMPTZ = ColumnType("timestamptz", "timestamptz")
JSONB = ColumnType("jsonb", "jsonb", _json_values)
BYTEA = ColumnType("bytea", "bytea")
TEXT = ColumnType("text", "text", _text_values)


def is_json_field(field: pa.Field) -> bool:
    metadata = field.metadata or {}
    return metadata.get(b"ARROW:extension:name") == b"arrow.json" or isinstance(field.type, pa.JsonType)


def column_type(field: pa.Field) -> ColumnType:
    """The Postgres column type for one Arrow field (see the module doc)."""
    t = field.type
    if is_json_field(field):
        return JSONB
    exact = (
        (pat.is_int8, SMALLINT),
        (pat.is_int16, SMALLINT),
        (pat.is_uint8, SMALLINT),
        (pat.is_int32, INTEGER),
        (pat.is_uint16, INTEGER),
        (pat.is_int64, BIGINT),
        (pat.is_uint32, BIGINT),
        (pat.is_uint64, NUMERIC),
        (pat.is_decimal, NUMERIC),
        (pat.is_float16, REAL),
        (pat.is_float32, REAL),
        (pat.is_float64, DOUBLE),
        (pat.is_boolean, BOOLEAN),
        (pat.is_date, DATE),
        (pat.is_time, TIME),
        (pat.is_binary, BYTEA),
        (pat.is_large_binary, BYTEA),
        (pat.is_fixed_size_binary, BYTEA),
    )
    for predicate, mapped in exact:
        if predicate(t):
            return mapped
    if pat.is_timestamp(t):
        return TIMESTAMPTZ if t.tz else TIMESTAMP
    if pat.is_list(t) or pat.is_large_list(t) or pat.is_struct(t) or pat.is_map(t):
        return JSONB
    return TEXT


def column_values(array: pa.Array | pa.ChunkedArray, column: ColumnType) -> list[Any]:
    """One column of a batch as the Python values its COPY dumper takes."""
    if column is TEXT and not (pat.is_string(array.type) or pat.is_large_string(array.type)):
        array = array.cast(pa.string()) if not pat.is_null(array.type) else array
    values = array.to_pylist()
    return column.convert(values) if column.convert is not None else values
