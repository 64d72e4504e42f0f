"""What a job type declares: ordered stages with handlers, a parameter model, fan-out and finalizer.

Adding a job type = one ``JobController`` subclass plus its handler functions, registered in
controllers/registry.py (docs/architecture.md, "Adding a job type"; every job type in docs/job-types.md).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from services.engine.retry_policy import RetryPolicy

TASK_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,127}$")

ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass(frozen=True)
class TaskSpec:
    """One task to create. ``key`` is its semantic key, unique within the stage (``tile_r0_c3``).

    With ``depends_on_predecessor`` the task receives the result of the task with the same key in
    the previous stage (lineage) as ``TaskContext.predecessor_result``.
    """

    key: str
    parameters: dict[str, Any] = field(default_factory=dict)
    depends_on_predecessor: bool = False

    def __post_init__(self) -> None:
        if not TASK_KEY_PATTERN.match(self.key):
            raise ValueError(f"task key {self.key!r} must match {TASK_KEY_PATTERN.pattern}")


@dataclass(frozen=True)
class TaskContext(Generic[ParamsT]):
    """Everything a handler gets: its own parameters, the job's, and its predecessor's result."""

    job_id: str
    task_id: str
    stage: int
    task_key: str
    attempt: int
    parameters: dict[str, Any]
    job_parameters: ParamsT
    predecessor_result: dict[str, Any] | None
    logger: logging.LoggerAdapter[logging.Logger]


TaskHandler = Callable[[TaskContext[Any]], dict[str, Any]]


@dataclass(frozen=True)
class StageDefinition:
    name: str
    handler: TaskHandler


# {task_key: result} of one stage's completed tasks.
StageResults = Mapping[str, dict[str, Any]]


@dataclass(frozen=True)
class JobOutcome:
    """All task outcomes of a finished job, handed to the finalizer."""

    results_by_stage: Mapping[str, StageResults]
    failed_by_stage: Mapping[str, Mapping[str, str]]

    @property
    def failed_count(self) -> int:
        return sum(len(v) for v in self.failed_by_stage.values())


class JobController(ABC, Generic[ParamsT]):
    """Base of every job type."""

    job_type: ClassVar[str]
    description: ClassVar[str]
    parameters_model: type[ParamsT]
    # Class attribute, or set per instance in __init__ when handlers are bound methods that need
    # injected resources (blob storage, options).
    stages: tuple[StageDefinition, ...]
    # Largest share of a stage's tasks that may fail before the job fails (stage failure policy).
    max_failure_ratio: ClassVar[float] = 0.0
    # Attempts and backoff for transient task errors; None = the TASK_MAX_ATTEMPTS /
    # TASK_RETRY_BASE_SECONDS / TASK_RETRY_MAX_SECONDS settings.
    retry_policy: ClassVar[RetryPolicy | None] = None
    # Integer fields of this job type's task results that the status sums per stage while the job
    # runs (``progress.stages[].counters``), e.g. ("files", "converted", "failed") for a stage whose
    # tasks each handle many files: progress in the job's own units, not only in tasks.
    progress_counters: ClassVar[tuple[str, ...]] = ()

    @property
    def total_stages(self) -> int:
        return len(self.stages)

    def stage(self, number: int) -> StageDefinition:
        return self.stages[number - 1]

    def parse_parameters(self, raw: Mapping[str, Any]) -> ParamsT:
        """Validate raw parameters (raises pydantic.ValidationError)."""
        return self.parameters_model.model_validate(raw)

    def resolve_parameters(self, params: ParamsT) -> ParamsT:
        """Called once at submission, after validation and before the job id is derived: a job type
        may pin what its parameters name to the version that exists now (process_raster adds the
        source blob's etag), so that a changed input is a new job. Raises a ``RequestError`` to
        refuse the submission; transient errors propagate (503). Default: the parameters as given."""
        return params

    def failure_ratio_limit(self, params: ParamsT) -> float:
        """The stage failure policy for this job; job types may let a parameter override it."""
        return self.max_failure_ratio

    @abstractmethod
    def create_tasks(self, stage: int, params: ParamsT, previous_results: StageResults) -> list[TaskSpec]:
        """Fan-out: the tasks of ``stage`` given the completed results of stage ``stage - 1``."""

    @abstractmethod
    def finalize(self, params: ParamsT, outcome: JobOutcome) -> dict[str, Any]:
        """Aggregate the job result from every stage's results."""
