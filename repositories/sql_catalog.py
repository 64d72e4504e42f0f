"""Loads the named SQL blocks of repositories/sql/*.sql once."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: sql}. Duplicate names are an error."""
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        if not body:
            raise ValueError(f"query {name!r} is empty")
        queries[name] = body
    return queries


@cache
def named_queries_in(file_name: str) -> dict[str, str]:
    """The named statements of ``sql/<file_name>``, read and parsed once per process."""
    return parse_named_queries((SQL_DIR / file_name).read_text(encoding="utf-8"))


def queries() -> dict[str, str]:
    return named_queries_in("queries.sql")


def query(name: str, file_name: str = "queries.sql") -> str:
    return named_queries_in(file_name)[name]


def declared_schema() -> str:
    return (SQL_DIR / "schema.sql").read_text(encoding="utf-8")
