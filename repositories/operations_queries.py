"""Statements behind the operator endpoints: dead letters, failure and throughput statistics.

They live in repositories/sql/operations.sql (same ``-- name:`` blocks as queries.sql) and run on
the connection of an open ``Database.transaction()`` / ``statements()``, next to the engine's own.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import psycopg

from repositories.named_queries import NamedQueries
from repositories.sql_catalog import SQL_DIR, parse_named_queries


@cache
def operations_queries() -> dict[str, str]:
    return parse_named_queries((SQL_DIR / "operations.sql").read_text(encoding="utf-8"))


class OperationsQueries:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def within(cls, repo: NamedQueries) -> OperationsQueries:
        """The operator statements on the connection (and so in the transaction) of ``repo``."""
        return cls(repo._conn)  # same package: the repository's own connection

    def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        row: dict[str, Any] | None = self._conn.execute(operations_queries()[name], params).fetchone()
        return row

    def _all(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._conn.execute(operations_queries()[name], params).fetchall()
        return rows

    def list_dead_letters(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; ``status`` "open" (not requeued), "requeued", or None for both."""
        return self._all("list_dead_letters", {"status": status, "limit": limit})

    def lock_dead_letter(self, dead_letter_id: int) -> dict[str, Any] | None:
        return self._one("lock_dead_letter", {"dead_letter_id": dead_letter_id})

    def mark_dead_letter_requeued(self, dead_letter_id: int) -> bool:
        return self._one("mark_dead_letter_requeued", {"dead_letter_id": dead_letter_id}) is not None

    def delete_dead_letter(self, dead_letter_id: int) -> bool:
        statement = operations_queries()["delete_dead_letter"]
        return self._conn.execute(statement, {"dead_letter_id": dead_letter_id}).rowcount > 0

    def job_exists(self, job_id: str) -> bool:
        return self._one("job_exists", {"job_id": job_id}) is not None

    def failure_groups(self, *, hours: int, limit: int, max_job_ids: int, reason_chars: int) -> list[dict[str, Any]]:
        params = {"hours": hours, "limit": limit, "max_job_ids": max_job_ids, "reason_chars": reason_chars}
        return self._all("failure_groups", params)

    def throughput_buckets(self, minutes: int) -> list[dict[str, Any]]:
        return self._all("throughput_buckets", {"minutes": minutes})
