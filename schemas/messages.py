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


class TaskMessage(BaseModel):
    """On the task queue: run one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(min_length=70, max_length=256)
    job_id: str = Field(pattern=r"^[0-9a-f]{64}$")
