"""catalog_container: STAC Items for every GeoTIFF under a prefix, in place (assets point at the
source blobs, nothing converted), and a Collection whose extent is their union.

Stages (task keys in brackets):
1. list [list]           the shared chunked listing (services/inventory/chunks.py).
2. items [chunk_NNNNN]   one task per chunk: probe each blob (full raster metadata) and build the
                         Item of each readable raster; items and skip reasons go back to the chunk row.
3. catalog [catalog]     the Collection and its Items, self-contained, under
                         {output_container}/stac/{collection_id}/. Non-raster and unreadable blobs
                         are reported; the job fails only when no blob yields an item.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field

from controllers.collection_ownership import CollectionOwnership, Owner
from controllers.container_defaults import deployment_parameters_model
from controllers.inventory_container import probe_chunk
from controllers.process_raster_parameters import CollectionId
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.blob_names import ContainerName
from schemas.errors import InvalidRequestError, PermanentTaskError
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.inventory.catalog import item_for, publish_in_place_catalog, skip_reason
from services.inventory.chunks import ChunkStore, ListingParameters, chunk_keys
from services.inventory.report import flatten
from services.stac.pgstac_loader import publish_catalog_to_pgstac

LIST_KEY = "list"
CATALOG_KEY = "catalog"
MAX_LISTED_SKIPS = 1000


class CatalogContainerParameters(ListingParameters):
    collection_id: CollectionId = Field(
        description="STAC collection id: 1-128 characters of a-z, 0-9, '.', '_' and '-', starting with a letter "
        "or digit, no '..', not ending in '.'."
    )
    output_container: ContainerName = Field(default="silver", description="Container for the STAC catalog.")
    pgstac: bool = Field(
        default=False,
        description="Also load the catalog into pgstac (the STAC API) as the last step, replacing what pgstac "
        "held of the collection. Needs PGSTAC_ENABLED.",
    )


class CatalogContainerController(JobController[CatalogContainerParameters]):
    job_type = "catalog_container"
    description = "STAC Items for every GeoTIFF under a prefix, in place, and a Collection (chunked fan-out)."
    parameters_model = CatalogContainerParameters

    def __init__(
        self, storage: BlobStorage, database: Database, *, max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE
    ) -> None:
        self._storage = storage
        self._db = database
        self._ownership = CollectionOwnership(database)
        self._max_chunks = max_tasks_per_stage  # chunk tasks of one listing (MAX_TASKS_PER_STAGE)
        self.pgstac_enabled = False  # PGSTAC_ENABLED (from_settings): whether `pgstac: true` is accepted
        self.stages = (
            StageDefinition("list", self.list_blobs),
            StageDefinition("items", self.items),
            StageDefinition("catalog", self.catalog),
        )

    @classmethod
    def from_settings(cls, settings: Settings, storage: BlobStorage, database: Database) -> CatalogContainerController:
        controller = cls(storage, database, max_tasks_per_stage=settings.max_tasks_per_stage)
        controller._ownership = CollectionOwnership(database, settings.collection_writer_lease_seconds)
        controller.pgstac_enabled = settings.pgstac_enabled
        controller.parameters_model = deployment_parameters_model(cls.parameters_model, settings)
        return controller

    @staticmethod
    def owner(params: CatalogContainerParameters) -> Owner:
        """Who owns the job's collection: this listing (container, prefix, suffix)."""
        suffix = f" (suffix {params.suffix!r})" if params.suffix else ""
        return Owner(
            key=f"catalog_container:{params.container}/{params.prefix}:{params.suffix or ''}",
            description=f"catalog_container of {params.container}/{params.prefix}{suffix}",
        )

    def resolve_parameters(self, params: CatalogContainerParameters) -> CatalogContainerParameters:
        """Claim the collection (409 naming collection_id when another source or job type owns it)."""
        if params.pgstac and not self.pgstac_enabled:
            raise InvalidRequestError(
                "pgstac is not enabled", details=[{"field": "pgstac", "message": "needs PGSTAC_ENABLED"}]
            )
        self._ownership.claim_at_submission(params.output_container, params.collection_id, self.owner(params))
        return params

    def list_blobs(self, ctx: TaskContext[CatalogContainerParameters]) -> dict[str, Any]:
        return ChunkStore(self._db, ctx.job_id).list_into_chunks(
            self._storage, ctx.job_parameters, max_chunks=self._max_chunks
        )

    def items(self, ctx: TaskContext[CatalogContainerParameters]) -> dict[str, Any]:
        container = ctx.job_parameters.container
        store = ChunkStore(self._db, ctx.job_id)
        entries = probe_chunk(self._storage, container, store.blobs(ctx.task_key), full_metadata=True)
        results = []
        for entry in entries:
            item = item_for(self._storage, container, entry)
            record = {"name": entry["name"], "kind": entry["kind"]}
            results.append({**record, "item": item} if item else {**record, "skipped": skip_reason(entry)})
        store.save_results(ctx.task_key, results)
        return {"blobs": len(results), "items": sum(1 for r in results if "item" in r)}

    def catalog(self, ctx: TaskContext[CatalogContainerParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        skipped: list[dict[str, str]] = []
        counts = {"blobs": 0, "not_raster": 0, "unreadable": 0}

        def items() -> Iterator[dict[str, Any]]:
            for result in flatten(ChunkStore(self._db, ctx.job_id).iter_results()):
                counts["blobs"] += 1
                if "item" in result:
                    yield result["item"]
                    continue
                counts["not_raster" if result["kind"] == "other" else "unreadable"] += 1
                if len(skipped) < MAX_LISTED_SKIPS:
                    skipped.append({"name": result["name"], "reason": result["skipped"]})

        source = f"{params.container}/{params.prefix}"
        self._ownership.take_over(params.output_container, params.collection_id, self.owner(params), ctx.job_id)
        published = publish_in_place_catalog(
            self._storage,
            items(),
            source=source,
            output_container=params.output_container,
            collection_id=params.collection_id,
        )
        if published is None:
            reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
            raise PermanentTaskError(
                f"no readable GeoTIFF under {source}: {counts['blobs']} blobs, {counts['not_raster']} not rasters, "
                f"{counts['unreadable']} unreadable" + (f" ({reasons})" if reasons else "")
            )
        if params.pgstac:  # last step: the catalog into pgstac (the STAC API)
            published["pgstac"] = publish_catalog_to_pgstac(
                self._db, self._storage, params.output_container, published["collection"]["blob"]
            )
        return {**published, **counts, "skipped": skipped}

    def create_tasks(
        self, stage: int, params: CatalogContainerParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(LIST_KEY)]
        if stage == 2:
            count = int(previous_results[LIST_KEY]["chunk_count"])
            return [TaskSpec(key) for key in chunk_keys(count, params.chunk_size, self._max_chunks)]
        return [TaskSpec(CATALOG_KEY)]

    def finalize(self, params: CatalogContainerParameters, outcome: JobOutcome) -> dict[str, Any]:
        return dict(outcome.results_by_stage.get("catalog", {}).get(CATALOG_KEY, {}))
