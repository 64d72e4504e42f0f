"""The job types geoetl knows, built from settings: register a new controller here.

The engine (services/engine/) never imports this module; the composition root
(services/container.py) builds the registry and hands it to the engine."""

from __future__ import annotations

import threading
from typing import Any

from controllers.catalog_container import CatalogContainerController
from controllers.export_geoparquet import ExportGeoParquetController
from controllers.extract_metadata import ExtractMetadataController
from controllers.hello_world import HelloWorldController
from controllers.ingest_stac import IngestStacController
from controllers.inventory_container import InventoryContainerController
from controllers.process_raster import ProcessRasterController
from controllers.process_rasters import ProcessRastersController
from controllers.stage_vector import StageVectorController
from controllers.validate_stac import ValidateStacController
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.settings import Settings
from services.engine import JobController, JobTypeRegistry


def default_registry(
    settings: Settings | None = None,
    storage: BlobStorage | None = None,
    database: Database | None = None,
) -> JobTypeRegistry:
    """Every job type, built with the resources it needs from ``settings``.

    Without settings and the data account's ``storage`` only the job types that need no resources
    are built; the listing job types (inventory_container, catalog_container, extract_metadata)
    also need the database, for their blob chunks, and stage_vector for the tables it loads.
    """
    controllers: list[JobController[Any]] = [HelloWorldController()]
    if settings is not None and storage is not None:
        raster = ProcessRasterController.from_settings(settings, storage, database)
        controllers.append(raster)
        if database is not None:
            controllers.append(
                ProcessRastersController.from_settings(settings, storage, database, raster.conversion_slots)
            )
            controllers.append(InventoryContainerController.from_settings(settings, storage, database))
            controllers.append(CatalogContainerController.from_settings(settings, storage, database))
            controllers.append(ExtractMetadataController.from_settings(settings, storage, database))
            vector_slots = threading.BoundedSemaphore(settings.vector_tasks_per_process)  # shared by both
            controllers.append(StageVectorController.from_settings(settings, storage, database, vector_slots))
            controllers.append(ExportGeoParquetController.from_settings(settings, storage, database, vector_slots))
            controllers.append(ValidateStacController.from_settings(settings, storage, database))
            if settings.pgstac_enabled:  # PGSTAC_ENABLED: pgstac is migrated into this database
                controllers.append(IngestStacController.from_settings(settings, storage, database))
    return JobTypeRegistry(controllers)
