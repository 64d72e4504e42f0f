"""Typed operations on the engine tables, within one open transaction.

Obtain one with ``Database.transaction()``; every method runs one named statement from
repositories/sql/queries.sql. State changes are single guarded statements (``UPDATE … WHERE
status IN (…) RETURNING``), so a lost race shows up as an empty result, never as a double change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from repositories import json_encoding
from repositories.blob_chunk_queries import BlobChunkQueries
from repositories.control_queries import ControlQueries
from repositories.maintenance_queries import MaintenanceQueries
from repositories.sql_catalog import query
from schemas.jobs import (
    ClaimedTask,
    JobPriority,
    JobRecord,
    JobStatus,
    NewTask,
    OutboxMessage,
    StageCounters,
    StageRecord,
    TaskRecord,
    TaskStatus,
)

json_encoding.register()  # strict JSON into jsonb (non-finite floats as strings), for every statement

INSERT_BATCH = 1000  # rows per executemany of a fan-out (bounds the parameters held at once)
_CLAIM_EXTRA_COLUMNS = ("job_type", "job_parameters", "predecessor_result", "priority")


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


class EngineRepository(ControlQueries, MaintenanceQueries, BlobChunkQueries):
    # --- jobs ---------------------------------------------------------------------------------

    def insert_job(
        self,
        job_id: str,
        job_type: str,
        parameters: dict[str, Any],
        total_stages: int,
        *,
        priority: JobPriority = JobPriority.NORMAL,
        max_parallel_tasks: int | None = None,
        depends_on: Sequence[str] = (),
    ) -> JobRecord | None:
        """Insert a new job; None when a job with this id already exists."""
        row = self._one(
            "insert_job",
            {
                "job_id": job_id,
                "job_type": job_type,
                "parameters": Jsonb(parameters),
                "total_stages": total_stages,
                "priority": str(priority),
                "max_parallel_tasks": max_parallel_tasks,
                "depends_on": list(depends_on),
            },
        )
        return JobRecord.from_row(row) if row else None

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._one("get_job", {"job_id": job_id})
        return JobRecord.from_row(row) if row else None

    def lock_job(self, job_id: str) -> JobRecord | None:
        """SELECT … FOR UPDATE: serialises fan-out and finalisation of one job."""
        row = self._one("lock_job", {"job_id": job_id})
        return JobRecord.from_row(row) if row else None

    def list_jobs(
        self,
        *,
        status: str | None,
        job_type: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[JobRecord]:
        rows = self._all(
            "list_jobs",
            {
                "status": status,
                "job_type": job_type,
                "after_created_at": after[0] if after else None,
                "after_job_id": after[1] if after else None,
                "limit": limit,
            },
        )
        return [JobRecord.from_row(r) for r in rows]

    def mark_job_processing(self, job_id: str) -> None:
        self._conn.execute(query("mark_job_processing"), {"job_id": job_id})

    def advance_job_stage(self, job_id: str, stage: int) -> JobRecord | None:
        """Move the job from ``stage`` to ``stage + 1``; None if it moved already or is not processing."""
        row = self._one("advance_job_stage", {"job_id": job_id, "stage": stage})
        return JobRecord.from_row(row) if row else None

    def complete_job(
        self, job_id: str, status: JobStatus, result: dict[str, Any] | None, error: str | None
    ) -> JobRecord | None:
        row = self._one(
            "complete_job", {"job_id": job_id, "status": str(status), "result": _json(result), "error": error}
        )
        return JobRecord.from_row(row) if row else None

    def fail_job(self, job_id: str, error: str, result: dict[str, Any] | None = None) -> JobRecord | None:
        """Mark a queued/processing job failed; None if it was already terminal."""
        row = self._one("fail_job", {"job_id": job_id, "error": error, "result": _json(result)})
        return JobRecord.from_row(row) if row else None

    def skip_queued_tasks(self, job_id: str, reason: str) -> int:
        rows = self._all("skip_queued_tasks", {"job_id": job_id, "reason": reason})
        return sum(int(r["n"]) for r in rows)

    # --- stages and tasks ---------------------------------------------------------------------

    def insert_stage(self, job_id: str, stage: int, name: str, task_count: int) -> bool:
        """Create the stage row; False if it already exists (a duplicate fan-out)."""
        return (
            self._one("insert_stage", {"job_id": job_id, "stage": stage, "name": name, "task_count": task_count})
            is not None
        )

    def list_stages(self, job_id: str) -> list[StageRecord]:
        return [StageRecord.from_row(r) for r in self._all("list_stages", {"job_id": job_id})]

    def insert_tasks(self, tasks: Sequence[NewTask], held: Sequence[bool] | None = None) -> None:
        """Insert task rows as queued, or held where ``held`` says so (max_parallel_tasks), in batches
        of INSERT_BATCH rows within the caller's transaction (a big fan-out stays all-or-nothing)."""
        with self._conn.cursor() as cur:
            for start in range(0, len(tasks), INSERT_BATCH):
                cur.executemany(
                    query("insert_task"),
                    [
                        {
                            "task_id": t.task_id,
                            "job_id": t.job_id,
                            "stage": t.stage,
                            "task_key": t.task_key,
                            "parameters": Jsonb(t.parameters),
                            "predecessor_task_id": t.predecessor_task_id,
                            "status": "held" if held and held[start + i] else "queued",
                        }
                        for i, t in enumerate(tasks[start : start + INSERT_BATCH])
                    ],
                )

    def completed_results_of_stage(self, job_id: str, stage: int) -> dict[str, dict[str, Any]]:
        rows = self._all("completed_results_of_stage", {"job_id": job_id, "stage": stage})
        return {r["task_key"]: r["result"] or {} for r in rows}

    def task_outcomes_of_job(self, job_id: str) -> list[dict[str, Any]]:
        return self._all("task_outcomes_of_job", {"job_id": job_id})

    def claim_task(self, task_id: str, lease_seconds: int, message_id: str, dequeue_count: int) -> ClaimedTask | None:
        row = self._one(
            "claim_task",
            {
                "task_id": task_id,
                "lease_seconds": lease_seconds,
                "message_id": message_id,
                "dequeue_count": dequeue_count,
            },
        )
        if row is None:
            return None
        extra = {k: row.pop(k) for k in _CLAIM_EXTRA_COLUMNS}
        return ClaimedTask(
            task=TaskRecord.from_row(row),
            job_type=extra["job_type"],
            job_parameters=extra["job_parameters"],
            predecessor_result=extra["predecessor_result"],
            priority=JobPriority(extra["priority"]),
        )

    def failed_tasks_of_stage(self, job_id: str, stage: int, limit: int = 3) -> list[dict[str, Any]]:
        return self._all("failed_tasks_of_stage", {"job_id": job_id, "stage": stage, "limit": limit})

    def describe_task_state(self, task_id: str) -> dict[str, Any] | None:
        return self._one("describe_task_state", {"task_id": task_id})

    def renew_task_leases(self, claims: Sequence[tuple[str, UUID]], lease_seconds: int) -> int:
        """Extend the leases still held under these (task_id, claim_token) claims; returns how many."""
        params = {
            "task_ids": [task_id for task_id, _ in claims],
            "claim_tokens": [token for _, token in claims],
            "lease_seconds": lease_seconds,
        }
        return self._run("renew_task_leases", params)

    def release_task_for_retry(self, task_id: str, claim_token: UUID, error: str, category: str) -> bool:
        """Queue the task again; False when the claim was lost (lease lapsed and taken over) or it finished."""
        params = {"task_id": task_id, "claim_token": claim_token, "error": error, "error_category": category}
        return self._one("release_task_for_retry", params) is not None

    def hand_back_task(self, task_id: str, claim_token: UUID) -> bool:
        return self._one("hand_back_task", {"task_id": task_id, "claim_token": claim_token}) is not None

    def set_task_error_category(self, task_id: str, category: str) -> None:
        self._conn.execute(query("set_task_error_category"), {"task_id": task_id, "error_category": category})

    def finish_task(
        self,
        task_id: str,
        status: TaskStatus,
        result: dict[str, Any] | None,
        error: str | None,
        claim_token: UUID | None = None,
    ) -> StageCounters | None:
        """Fan-in step (SQL function finish_task). None when the task id is unknown. With a claim token
        the task changes only while still held under that claim (``changed`` is False otherwise)."""
        params = {
            "task_id": task_id,
            "status": str(status),
            "result": _json(result),
            "error": error,
            "claim_token": claim_token,
        }
        row = self._one("finish_task", params)
        if row is None or row["job_id"] is None:
            return None
        return StageCounters(**row)

    def task_counts_of_job(self, job_id: str) -> list[dict[str, Any]]:
        return self._all("task_counts_of_job", {"job_id": job_id})

    def task_result_counters_of_job(self, job_id: str, keys: Sequence[str]) -> dict[int, dict[str, int]]:
        """{stage: {key: sum}} of integer result fields of the job's completed tasks."""
        sums: dict[int, dict[str, int]] = {}
        for row in self._all("task_result_counters_of_job", {"job_id": job_id, "keys": list(keys)}):
            sums.setdefault(int(row["stage"]), {})[str(row["key"])] = int(row["total"])
        return sums

    def job_timing(self, job_id: str) -> dict[str, Any]:
        row = self._one("job_timing", {"job_id": job_id})
        return row or {"first_started_at": None, "finished": 0}

    def list_tasks(
        self, job_id: str, *, stage: int | None, status: str | None, after_task_id: str | None, limit: int
    ) -> list[TaskRecord]:
        rows = self._all(
            "list_tasks",
            {"job_id": job_id, "stage": stage, "status": status, "after_task_id": after_task_id, "limit": limit},
        )
        return [TaskRecord.from_row(r) for r in rows]

    # --- outbox -------------------------------------------------------------------------------

    def add_outbox_messages(
        self, queue: str, bodies: Sequence[dict[str, Any]], job_id: str, delay_seconds: float = 0.0
    ) -> list[OutboxMessage]:
        messages: list[OutboxMessage] = []
        with self._conn.cursor() as cur:
            for start in range(0, len(bodies), INSERT_BATCH):
                batch = bodies[start : start + INSERT_BATCH]
                cur.executemany(
                    query("insert_outbox"),
                    [
                        {"queue": queue, "body": Jsonb(b), "job_id": job_id, "delay_seconds": delay_seconds}
                        for b in batch
                    ],
                    returning=True,
                )
                while True:
                    row: Any = cur.fetchone()
                    if row is not None:
                        messages.append(OutboxMessage(**row))
                    if not cur.nextset():
                        break
        return messages

    def pending_outbox_of_job(self, job_id: str, older_than_seconds: float) -> list[OutboxMessage]:
        rows = self._all("pending_outbox_of_job", {"job_id": job_id, "older_than_seconds": older_than_seconds})
        return [OutboxMessage(**r) for r in rows]

    def delete_outbox(self, message_ids: Sequence[int]) -> None:
        if message_ids:
            self._conn.execute(query("delete_outbox"), {"message_ids": list(message_ids)})
