"""Queue message bodies. Small JSON carrying ids only (queue messages are limited to 64 KB)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class JobAction(StrEnum):
    CREATE_STAGE = "create_stage"
    FINALIZE = "finalize"


class JobMessage(BaseModel):
    """On the job queue: create the tasks of ``stage`` (fan-out), or finalize the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    stage: int = Field(ge=1)
    action: JobAction = JobAction.CREATE_STAGE
    # Times this message was re-sent because Postgres was unavailable (see services/engine/deferral.py).
    deferrals: int = Field(default=0, ge=0)


class TaskMessage(BaseModel):
    """On the task queue: run one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(min_length=70, max_length=256)
    job_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Set when re-sent because Postgres was unavailable: the id of the first delivery's message and
    # how often it was deferred, so that delivery's claim on the task can be taken over.
    origin_message_id: str | None = Field(default=None, max_length=128)
    deferrals: int = Field(default=0, ge=0)
