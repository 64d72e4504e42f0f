"""Statements of the per-caller submission limit: token buckets in table ``rate_limits``.

They live in repositories/sql/rate_limits.sql (same ``-- name:`` blocks as queries.sql) and run on
the connection of an open ``Database.statements()`` (autocommit: each is its own transaction).
"""

from __future__ import annotations

from dataclasses import dataclass

from repositories.named_queries import NamedQueries
from repositories.sql_catalog import named_queries_in


def rate_limit_queries() -> dict[str, str]:
    return named_queries_in(RateLimitQueries.SQL_FILE)


@dataclass(frozen=True)
class TokenResult:
    """One attempt to take a token: granted or not, tokens left, seconds until the next token (0 if granted)."""

    granted: bool
    tokens: float
    retry_after_seconds: float


class RateLimitQueries(NamedQueries):
    SQL_FILE = "rate_limits.sql"

    def take_token(self, caller_key: str, *, per_second: float, burst: int) -> TokenResult:
        params = {"caller_key": caller_key, "per_second": per_second, "burst": burst}
        row = self._one("take_token", params)
        if row is None:  # INSERT … ON CONFLICT DO UPDATE always returns its row
            raise RuntimeError("take_token returned no row")
        return TokenResult(bool(row["granted"]), float(row["tokens"]), float(row["retry_after_seconds"]))

    def prune_full_buckets(self, full_after_seconds: float) -> int:
        return self._run("prune_full_buckets", {"full_after_seconds": full_after_seconds})
