"""Typed records of the engine's state, as read from Postgres."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS, JobStatus.FAILED, JobStatus.CANCELLED}
)


class JobPriority(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


SATISFIED_DEPENDENCY_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS})


class TaskStatus(StrEnum):
    HELD = "held"  # created, waiting for a slot under the job's max_parallel_tasks
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    job_type: str
    parameters: dict[str, Any]
    status: JobStatus
    stage: int
    total_stages: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    priority: JobPriority = JobPriority.NORMAL
    max_parallel_tasks: int | None = None
    depends_on: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRecord:
        return cls(**{**row, "status": JobStatus(row["status"]), "priority": JobPriority(row["priority"])})


@dataclass(frozen=True)
class StageRecord:
    job_id: str
    stage: int
    name: str
    status: str
    task_count: int
    completed_count: int
    failed_count: int
    skipped_count: int
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StageRecord:
        return cls(**row)


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    job_id: str
    stage: int
    task_key: str
    parameters: dict[str, Any]
    predecessor_task_id: str | None
    status: TaskStatus
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    lease_expires_at: datetime | None
    claimed_by_message: str | None
    claimed_dequeue_count: int | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error_category: str | None = None
    claim_token: UUID | None = None  # of the claim holding it while processing (fencing)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskRecord:
        return cls(**{**row, "status": TaskStatus(row["status"])})


@dataclass(frozen=True)
class ClaimedTask:
    """A task this instance now holds a lease on, with what its handler needs."""

    task: TaskRecord
    job_type: str
    job_parameters: dict[str, Any]
    predecessor_result: dict[str, Any] | None
    priority: JobPriority = JobPriority.NORMAL


@dataclass(frozen=True)
class StageCounters:
    """What finish_task() reports: whether this call changed the task and closed the stage."""

    changed: bool
    job_id: str
    stage: int
    task_count: int
    completed_count: int
    failed_count: int
    skipped_count: int
    closed_stage: bool


@dataclass(frozen=True)
class NewTask:
    """A task row to insert."""

    task_id: str
    job_id: str
    stage: int
    task_key: str
    parameters: dict[str, Any]
    predecessor_task_id: str | None


@dataclass(frozen=True)
class OutboxMessage:
    message_id: int
    queue: str
    body: dict[str, Any]
    visible_at: datetime
