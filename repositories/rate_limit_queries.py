"""Statements of the per-caller submission limit: token buckets in table ``rate_limits``.

They live in repositories/sql/rate_limits.sql (same ``-- name:`` blocks as queries.sql) and run on
the connection of an open ``Database.statements()`` (autocommit: each is its own transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg

from repositories.named_queries import NamedQueries
from repositories.sql_catalog import SQL_DIR, parse_named_queries


@cache
def rate_limit_queries() -> dict[str, str]:
    return parse_named_queries((SQL_DIR / "rate_limits.sql").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class TokenResult:
    """One attempt to take a token: granted or not, tokens left, seconds until the next token (0 if granted)."""

    granted: bool
    tokens: float
    retry_after_seconds: float


class RateLimitQueries:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def within(cls, repo: NamedQueries) -> RateLimitQueries:
        """The rate-limit statements on the connection (and so in the transaction) of ``repo``."""
        return cls(repo._conn)  # same package: the repository's own connection

    def take_token(self, caller_key: str, *, per_second: float, burst: int) -> TokenResult:
        params = {"caller_key": caller_key, "per_second": per_second, "burst": burst}
        row: dict[str, Any] | None = self._conn.execute(rate_limit_queries()["take_token"], params).fetchone()
        if row is None:  # INSERT … ON CONFLICT DO UPDATE always returns its row
            raise RuntimeError("take_token returned no row")
        return TokenResult(bool(row["granted"]), float(row["tokens"]), float(row["retry_after_seconds"]))

    def prune_full_buckets(self, full_after_seconds: float) -> int:
        statement = rate_limit_queries()["prune_full_buckets"]
        return self._conn.execute(statement, {"full_after_seconds": full_after_seconds}).rowcount
