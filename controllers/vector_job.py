"""What the vector job types (stage_vector, export_geoparquet) share: the data account's blob
storage, the database their tables live in, the default schema (VECTOR_SCHEMA), and the process's
slots for memory-heavy vector tasks (VECTOR_TASKS_PER_PROCESS).

The host hands one worker process up to batchSize + newBatchThreshold messages at once; a
stage_vector load or an export_geoparquet write holds up to ~0.9 GiB, so without a bound one
process running six writes reached 3.2 GiB on a 2 GB GeoPackage (bench/README.md). The heavy
stages' handlers therefore run inside a slot; a task that finds every slot taken for
SLOT_WAIT_SECONDS goes back to the queue (InstanceBusyError: no attempt counted) for whichever
instance has room."""

from __future__ import annotations

import functools
import random
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel

from controllers.container_defaults import deployment_parameters_model
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.errors import InstanceBusyError
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, StageDefinition, TaskContext

ParamsT = TypeVar("ParamsT", bound=BaseModel)
Handler = Callable[[TaskContext[ParamsT]], dict[str, Any]]

SLOT_WAIT_SECONDS = 5.0  # a heavy task waits this long for a slot of its process, then is handed back
HAND_BACK_SECONDS = (2.0, 8.0)  # uniform jitter, so handed-back tasks do not return in lockstep


class VectorJobController(JobController[ParamsT], Generic[ParamsT]):
    def __init__(
        self,
        storage: BlobStorage,
        database: Database,
        *,
        default_schema: str = "geodata",
        max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE,
        task_slots: threading.Semaphore | None = None,
        slot_wait_seconds: float = SLOT_WAIT_SECONDS,
    ) -> None:
        self._storage = storage
        self._db = database
        self._default_schema = default_schema
        self._max_tasks = max_tasks_per_stage
        self._task_slots = task_slots or threading.BoundedSemaphore(1)
        self._slot_wait_seconds = slot_wait_seconds
        self.stages = self.stage_definitions()

    @abstractmethod
    def stage_definitions(self) -> tuple[StageDefinition, ...]:
        """The job type's stages, with its bound handlers."""

    @contextmanager
    def task_slot(self) -> Iterator[None]:
        """Hold one of the process's heavy vector task slots, or hand the task back (InstanceBusyError)."""
        if not self._task_slots.acquire(timeout=self._slot_wait_seconds):
            raise InstanceBusyError(
                f"every heavy vector task slot of this process stayed busy for {self._slot_wait_seconds:.0f}s "
                "(VECTOR_TASKS_PER_PROCESS)",
                retry_after=random.uniform(*HAND_BACK_SECONDS),
            )
        try:
            yield
        finally:
            self._task_slots.release()

    def in_a_task_slot(self, handler: Handler[ParamsT]) -> Handler[ParamsT]:
        """``handler`` run while holding a heavy task slot (for the stages that hold a lot of memory)."""

        @functools.wraps(handler)
        def run(ctx: TaskContext[ParamsT]) -> dict[str, Any]:
            with self.task_slot():
                return handler(ctx)

        return run

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        storage: BlobStorage,
        database: Database,
        task_slots: threading.Semaphore | None = None,
    ) -> Self:
        """``task_slots``: one semaphore shared by every vector job type of the process (else its own)."""
        controller = cls(
            storage,
            database,
            default_schema=settings.vector_schema,
            max_tasks_per_stage=settings.max_tasks_per_stage,
            task_slots=task_slots or threading.BoundedSemaphore(settings.vector_tasks_per_process),
        )
        controller.parameters_model = deployment_parameters_model(cls.parameters_model, settings)
        return controller
