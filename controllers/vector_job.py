"""What the vector job types (stage_vector, export_geoparquet) share: the data account's blob
storage, the database their tables live in, and the default schema (VECTOR_SCHEMA)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Generic, Self, TypeVar

from pydantic import BaseModel

from controllers.container_defaults import deployment_parameters_model
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, StageDefinition

ParamsT = TypeVar("ParamsT", bound=BaseModel)


class VectorJobController(JobController[ParamsT], Generic[ParamsT]):
    def __init__(
        self,
        storage: BlobStorage,
        database: Database,
        *,
        default_schema: str = "geodata",
        max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE,
    ) -> None:
        self._storage = storage
        self._db = database
        self._default_schema = default_schema
        self._max_tasks = max_tasks_per_stage
        self.stages = self.stage_definitions()

    @abstractmethod
    def stage_definitions(self) -> tuple[StageDefinition, ...]:
        """The job type's stages, with its bound handlers."""

    @classmethod
    def from_settings(cls, settings: Settings, storage: BlobStorage, database: Database) -> Self:
        controller = cls(
            storage, database, default_schema=settings.vector_schema, max_tasks_per_stage=settings.max_tasks_per_stage
        )
        controller.parameters_model = deployment_parameters_model(cls.parameters_model, settings)
        return controller
