"""Statements behind the operator endpoints: dead letters, failure and throughput statistics.

They live in repositories/sql/operations.sql (same ``-- name:`` blocks as queries.sql) and run on
the connection of an open ``Database.transaction()`` / ``statements()``, next to the engine's own.
"""

from __future__ import annotations

from typing import Any

from repositories.named_queries import NamedQueries
from repositories.sql_catalog import named_queries_in


def operations_queries() -> dict[str, str]:
    return named_queries_in(OperationsQueries.SQL_FILE)


class OperationsQueries(NamedQueries):
    SQL_FILE = "operations.sql"

    def list_dead_letters(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; ``status`` "open" (not requeued), "requeued", or None for both."""
        return self._all("list_dead_letters", {"status": status, "limit": limit})

    def lock_dead_letter(self, dead_letter_id: int) -> dict[str, Any] | None:
        return self._one("lock_dead_letter", {"dead_letter_id": dead_letter_id})

    def mark_dead_letter_requeued(self, dead_letter_id: int) -> bool:
        return self._one("mark_dead_letter_requeued", {"dead_letter_id": dead_letter_id}) is not None

    def delete_dead_letter(self, dead_letter_id: int) -> bool:
        return self._run("delete_dead_letter", {"dead_letter_id": dead_letter_id}) > 0

    def job_exists(self, job_id: str) -> bool:
        return self._one("job_exists", {"job_id": job_id}) is not None

    def failure_groups(self, *, hours: int, limit: int, max_job_ids: int, reason_chars: int) -> list[dict[str, Any]]:
        params = {"hours": hours, "limit": limit, "max_job_ids": max_job_ids, "reason_chars": reason_chars}
        return self._all("failure_groups", params)

    def throughput_buckets(self, minutes: int) -> list[dict[str, Any]]:
        return self._all("throughput_buckets", {"minutes": minutes})
