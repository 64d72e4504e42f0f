"""The job types geoetl knows. Register a new controller here."""

from __future__ import annotations

from typing import Any

from controllers.base import JobController
from controllers.catalog_container import CatalogContainerController
from controllers.extract_metadata import ExtractMetadataController
from controllers.hello_world import HelloWorldController
from controllers.inventory_container import InventoryContainerController
from controllers.process_raster import ProcessRasterController
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.settings import Settings


class JobTypeRegistry:
    def __init__(self, controllers: list[JobController[Any]]) -> None:
        self._by_type: dict[str, JobController[Any]] = {}
        for controller in controllers:
            if controller.job_type in self._by_type:
                raise ValueError(f"job type {controller.job_type!r} registered twice")
            if not controller.stages:
                raise ValueError(f"job type {controller.job_type!r} declares no stages")
            self._by_type[controller.job_type] = controller

    def get(self, job_type: str) -> JobController[Any] | None:
        return self._by_type.get(job_type)

    def all(self) -> list[JobController[Any]]:
        return [self._by_type[name] for name in sorted(self._by_type)]


def default_registry(
    settings: Settings | None = None,
    storage: BlobStorage | None = None,
    database: Database | None = None,
) -> JobTypeRegistry:
    """Every job type, built with the resources it needs from ``settings``.

    Without settings and the data account's ``storage`` only the job types that need no resources
    are built; the listing job types (inventory_container, catalog_container, extract_metadata)
    also need the database, for their blob chunks.
    """
    controllers: list[JobController[Any]] = [HelloWorldController()]
    if settings is not None and storage is not None:
        controllers.append(ProcessRasterController.from_settings(settings, storage))
        if database is not None:
            controllers.append(InventoryContainerController.from_settings(settings, storage, database))
            controllers.append(CatalogContainerController.from_settings(settings, storage, database))
            controllers.append(ExtractMetadataController.from_settings(settings, storage, database))
    return JobTypeRegistry(controllers)
