"""Statements behind job control: cancel, retry, dependencies, held tasks, dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from repositories.named_queries import NamedQueries
from schemas.jobs import JobRecord, JobStatus


class ControlQueries(NamedQueries):
    def cancel_job(self, job_id: str, reason: str) -> JobRecord | None:
        row = self._one("cancel_job", {"job_id": job_id, "reason": reason})
        return JobRecord.from_row(row) if row else None

    def lock_jobs_shared(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """FOR SHARE: a dependency cannot change status until the dependent job is committed."""
        return self._all("lock_jobs_shared", {"job_ids": list(job_ids)})

    def job_statuses(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Plain read, no lock (see services.engine.job_lifecycle.dependency_state)."""
        return self._all("job_statuses", {"job_ids": list(job_ids)})

    def waiting_dependents(self, job_id: str) -> list[str]:
        return [r["job_id"] for r in self._all("waiting_dependents", {"job_id": job_id})]

    def release_held_tasks(self, job_id: str, max_parallel_tasks: int) -> list[str]:
        rows = self._all("release_held_tasks", {"job_id": job_id, "max_parallel_tasks": max_parallel_tasks})
        return [r["task_id"] for r in rows]

    def hold_tasks(self, task_ids: Sequence[str]) -> None:
        self._run("hold_tasks", {"task_ids": list(task_ids)})

    def earliest_unfinished_stage(self, job_id: str) -> int | None:
        row = self._one("earliest_unfinished_stage", {"job_id": job_id})
        return int(row["stage"]) if row and row["stage"] is not None else None

    def delete_stages_after(self, job_id: str, stage: int) -> int:
        return self._run("delete_stages_after", {"job_id": job_id, "stage": stage})

    def reset_unsuccessful_tasks(self, job_id: str, stage: int) -> list[str]:
        return [r["task_id"] for r in self._all("reset_unsuccessful_tasks", {"job_id": job_id, "stage": stage})]

    def recount_stage(self, job_id: str, stage: int) -> dict[str, Any] | None:
        """Repair: recount a processing stage and close it if all its tasks are finished."""
        return self._one("recount_stage", {"job_id": job_id, "stage": stage, "reopen": False})

    def reopen_stage(self, job_id: str, stage: int) -> bool:
        """Retry: recount a stage and mark it processing again; False if it does not exist."""
        return self._one("recount_stage", {"job_id": job_id, "stage": stage, "reopen": True}) is not None

    def reopen_job(self, job_id: str, status: JobStatus, stage: int) -> JobRecord | None:
        row = self._one("reopen_job", {"job_id": job_id, "status": str(status), "stage": stage})
        return JobRecord.from_row(row) if row else None

    def insert_dead_letter(
        self,
        *,
        queue: str,
        body: str,
        reason: str,
        message_id: str | None = None,
        dequeue_count: int | None = None,
        job_id: str | None = None,
        task_id: str | None = None,
    ) -> None:
        self._run(
            "insert_dead_letter",
            {
                "queue": queue,
                "message_id": message_id,
                "dequeue_count": dequeue_count,
                "body": body,
                "reason": reason,
                "job_id": job_id,
                "task_id": task_id,
            },
        )
