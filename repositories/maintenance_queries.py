"""Statements behind the janitor: stale outbox rows, expired leases, lost messages, repairs."""

from __future__ import annotations

from typing import Any

from repositories.named_queries import NamedQueries
from schemas.jobs import OutboxMessage


class MaintenanceQueries(NamedQueries):
    def take_stale_outbox(self, older_than_seconds: float, limit: int) -> list[OutboxMessage]:
        rows = self._all("take_stale_outbox", {"older_than_seconds": older_than_seconds, "limit": limit})
        return [OutboxMessage(**r) for r in rows]

    def expired_leases(self, grace_seconds: float, limit: int) -> list[dict[str, Any]]:
        return self._all("expired_leases", {"grace_seconds": grace_seconds, "limit": limit})

    def requeue_expired_task(self, task_id: str, error: str, grace_seconds: float) -> bool:
        params = {"task_id": task_id, "error": error, "grace_seconds": grace_seconds}
        return self._one("requeue_expired_task", params) is not None

    def touch_forgotten_task(self, task_id: str, older_than_seconds: float) -> bool:
        params = {"task_id": task_id, "older_than_seconds": older_than_seconds}
        return self._one("touch_forgotten_task", params) is not None

    def forgotten_queued_tasks(self, older_than_seconds: float, limit: int) -> list[dict[str, Any]]:
        return self._all("forgotten_queued_tasks", {"older_than_seconds": older_than_seconds, "limit": limit})

    def stages_needing_repair(self, limit: int) -> list[dict[str, Any]]:
        return self._all("stages_needing_repair", {"limit": limit})

    def stalled_jobs(self, older_than_seconds: float, limit: int) -> list[dict[str, Any]]:
        return self._all("stalled_jobs", {"older_than_seconds": older_than_seconds, "limit": limit})

    def touch_job(self, job_id: str) -> None:
        self._run("touch_job", {"job_id": job_id})

    def delete_old_dead_letters(self, hours: float) -> int:
        return self._run("delete_old_dead_letters", {"hours": hours})

    def applied_migration_version(self) -> int:
        """The newest migration applied to this schema (health: compared with the code's)."""
        row = self._one("applied_migration_version", {})
        return int(row["version"]) if row else 0
