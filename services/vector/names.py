"""Identifiers: laundering source names into Postgres columns and tables, and validating table names.

Rule (``launder``): Unicode folded to ASCII (NFKD, accents dropped: ``Größe`` → ``grosse``), lower
case, every run of other characters → ``_``, trimmed of ``_`` at the ends; a name that would start
with a digit gets a ``_`` in front; empty → ``col``; a reserved SQL word (``select``, ``user``) gets
a ``_`` appended; at most 63 bytes. Column names are made unique in order (``name``, ``name_2``…),
after the columns the loader adds itself (``fid``, ``geom``). The mapping source → column is part
of the job result.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

MAX_IDENTIFIER_BYTES = 63
IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_FOLDED = {"ß": "ss", "æ": "ae", "ø": "o", "œ": "oe", "ð": "d", "þ": "th", "ł": "l", "đ": "d"}

# Postgres reserved key words (pg_get_keywords() catcode 'R' and the type/function names that cannot
# be column names unquoted, catcode 'T'), as of PostgreSQL 15.
_RESERVED_TEXT = """all analyse analyze and any array as asc asymmetric authorization between bigint binary bit
    boolean both case cast char character check coalesce collate collation column concurrently
    constraint create cross current_catalog current_date current_role current_schema current_time
    current_timestamp current_user dec decimal default deferrable desc distinct do else end except
    exists extract false fetch float for foreign freeze from full grant greatest group grouping having
    ilike in initially inner inout int integer intersect interval into is isnull join json_array
    json_arrayagg json_object json_objectagg lateral leading least left like limit localtime
    localtimestamp national natural nchar none normalize not notnull null nullif numeric offset on
    only or order out outer overlaps overlay placing position precision primary real references
    returning right row select session_user setof similar smallint some substring symmetric system_user
    table tablesample then time timestamp to trailing treat trim true union unique user using values
    varchar variadic verbose when where window with xmlattributes xmlconcat xmlelement xmlexists
    xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable"""
RESERVED_WORDS = frozenset(_RESERVED_TEXT.split())


def _truncate(name: str, limit: int = MAX_IDENTIFIER_BYTES) -> str:
    return name.encode()[:limit].decode(errors="ignore")


def launder(name: str) -> str:
    """A valid, unquoted-safe Postgres identifier for ``name`` (see the module doc)."""
    lowered = "".join(_FOLDED.get(ch, ch) for ch in name.lower())
    ascii_only = unicodedata.normalize("NFKD", lowered).encode("ascii", "ignore").decode()
    word = _NOT_WORD.sub("_", ascii_only).strip("_") or "col"
    if word[0].isdigit():
        word = f"_{word}"
    if word in RESERVED_WORDS:
        word = f"{word}_"
    return _truncate(word)


def unique_names(names: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """``names`` laundered, each made unique against ``taken`` and the ones before it."""
    used = set(taken)
    result = []
    for name in names:
        base = launder(name)
        candidate, n = base, 1
        while candidate in used:
            n += 1
            suffix = f"_{n}"
            candidate = _truncate(base, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix
        used.add(candidate)
        result.append(candidate)
    return result


def column_mapping(source_names: Sequence[str], reserved: Iterable[str]) -> dict[str, str]:
    """{source field name: column name}, laundered and unique against ``reserved`` columns."""
    return dict(zip(source_names, unique_names(source_names, reserved), strict=True))


def identifier_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable table or schema name (None when it is)."""
    if not _IDENTIFIER.match(name):
        return "must be 1-63 characters of a-z, 0-9 and _, starting with a letter or _"
    if name in RESERVED_WORDS:
        return "must not be a reserved SQL word"
    if name.startswith("pg_"):
        return "must not start with pg_ (reserved for system objects)"
    return None


def default_table_name(blob_name: str, layer: str | None, layer_count: int) -> str:
    """The table a layer goes to when no ``table`` is given: the file's stem, plus the layer's name
    when the file has several layers (laundered, at most 63 bytes)."""
    stem = blob_name.rsplit("/", 1)[-1]
    for suffix in (".zip", ".gpkg", ".shp", ".geojson", ".geojsonl", ".geojsons", ".json", ".fgb", ".csv"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return table_for_layer(launder(stem), layer, layer_count)


def table_for_layer(base: str, layer: str | None, layer_count: int) -> str:
    if layer is None or layer_count <= 1:
        return base
    return launder(f"{base}_{layer}")
