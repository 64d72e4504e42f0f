"""process_raster: a GeoTIFF in blob storage → Cloud-Optimized GeoTIFF tile(s) + a STAC collection.

Stages (task keys in brackets):
1. validate [source]   open the source in place through /vsiaz/ and record its metadata; bad input
                       fails here, at once, with a one-line reason.
2. plan [source]       lineage from validate: cut the source into tiles that fit the per-task
                       memory budget (one tile when it fits) and resolve the item datetime.
3. cog [tile_rR_cC]    fanned out from the plan's tile list (create_tasks reads it): one task per
                       tile converts its window to a COG and uploads it.
4. stac [catalog]      one task: the mosaic VRT (more than one tile) and the STAC catalog.

The source's version is part of the job: at submission ``resolve_parameters`` records the blob's
etag as ``source_etag`` (one HEAD request), so the job id changes when the blob is replaced and a
resubmission converts the new file. validate, and every cog task before and after reading, check
that the blob still has that etag: a source replaced after submission fails the job at once rather
than mixing versions.

Outputs never collide (docs/job-types.md, "Outputs never collide and never lie"): tiles go under
``pipeline.output_prefix(blob_name, params.output_key)``, injective in (source path, output options,
collection); the collection id is claimed for this source and these options at submission (409 for
another owner, controllers/collection_ownership.py); plan and stac take over as the collection's
writer before writing, which marks an earlier job of the same outputs ``superseded_by``.

The plan is one task, not one per tile: a tile's plan is a window in a list, and per-tile plan
tasks would only cost a queue round trip each. Lineage links plan to validate (same key), and the
cog stage reads the whole plan in create_tasks, so every cog task carries its window.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controllers.collection_ownership import DEFAULT_WRITER_LEASE_SECONDS, CollectionOwnership, Owner
from controllers.container_defaults import with_default_containers
from controllers.process_raster_parameters import ProcessRasterParameters, output_options, unquoted_etag
from controllers.source_version import pin_source_etag
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.errors import InvalidRequestError, PermanentTaskError
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.raster.cog import (
    CogOptions,
    configure_gdal_block_cache,
    default_overview_resampling,
)
from services.raster.inspect import RasterMetadata
from services.raster.pipeline import (
    BlobRef,
    CatalogTile,
    convert_tile,
    publish_catalog,
    tile_blob,
    validate_source,
)
from services.raster.tiling import TaskMemoryModel, TileWindow, TilingError, plan_tiles, warp_scale_of
from services.stac.pgstac_loader import publish_catalog_to_pgstac

SOURCE_KEY = "source"
CATALOG_KEY = "catalog"


@dataclass(frozen=True)
class RasterJobOptions:
    memory: TaskMemoryModel
    gdal_threads: int = 2
    conversions_per_process: int = 1
    read_directly: bool = False  # RASTER_READ_DIRECTLY: convert windows without a local staging copy
    # A tile that is the whole source is converted from a local copy of the blob (services/raster/convert.py).
    copy_whole_source: bool = True
    default_container: str = "bronze"
    default_output_container: str = "silver"
    max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE  # most tiles (cog tasks) one job may plan
    # Containers a job may read and write (INPUT_CONTAINERS / OUTPUT_CONTAINERS); None: any.
    readable_containers: tuple[str, ...] | None = None
    writable_containers: tuple[str, ...] | None = None
    writer_lease_seconds: float = DEFAULT_WRITER_LEASE_SECONDS  # COLLECTION_WRITER_LEASE_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings, storage: BlobStorage) -> RasterJobOptions:
        return cls(
            memory=TaskMemoryModel(
                budget_bytes=settings.raster_task_memory_budget_bytes,
                worker_baseline_bytes=settings.raster_worker_baseline_bytes,
                upload_buffer_bytes=storage.upload_buffer_bytes,
            ),
            gdal_threads=settings.gdal_threads,
            conversions_per_process=settings.raster_conversions_per_process,
            read_directly=settings.raster_read_directly,
            default_container=settings.bronze_container,
            default_output_container=settings.silver_container,
            max_tasks_per_stage=settings.max_tasks_per_stage,
            readable_containers=settings.readable_containers,
            writable_containers=settings.writable_containers,
            writer_lease_seconds=settings.collection_writer_lease_seconds,
        )


class ProcessRasterController(JobController[ProcessRasterParameters]):
    job_type = "process_raster"
    description = "GeoTIFF in blob storage → Cloud-Optimized GeoTIFF tile(s) and a STAC collection."

    def __init__(self, storage: BlobStorage, options: RasterJobOptions, database: Database | None = None) -> None:
        self._storage = storage
        self._options = options
        # Collection ownership and output supersession (collection_owners); without a database
        # (unit tests of the handlers) nothing is claimed.
        self._ownership = CollectionOwnership(database, options.writer_lease_seconds) if database is not None else None
        self._db = database
        self.pgstac_enabled = False  # PGSTAC_ENABLED (from_settings): whether `pgstac: true` is accepted
        # One per process in practice (the container builds the registry once): bounds how many
        # tile conversions, each up to a task budget, run at once in this process.
        self._conversion_slots = threading.BoundedSemaphore(options.conversions_per_process)
        configure_gdal_block_cache(options.memory.gdal_cache_bytes)
        self.parameters_model = with_default_containers(
            ProcessRasterParameters,
            readable=options.readable_containers,
            writable=options.writable_containers,
            container=options.default_container,
            output_container=options.default_output_container,
        )
        self.stages = (
            StageDefinition("validate", self.validate),
            StageDefinition("plan", self.plan),
            StageDefinition("cog", self.convert),
            StageDefinition("stac", self.catalog),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, storage: BlobStorage, database: Database | None = None
    ) -> ProcessRasterController:
        controller = cls(storage, RasterJobOptions.from_settings(settings, storage), database)
        controller.pgstac_enabled = settings.pgstac_enabled and database is not None
        return controller

    @property
    def conversion_slots(self) -> threading.BoundedSemaphore:
        """The process's conversion slots, shared with process_rasters (controllers/registry.py)."""
        return self._conversion_slots

    @staticmethod
    def owner(params: ProcessRasterParameters) -> Owner:
        """Who owns the job's collection: this source path with these output options."""
        options = output_options(params)
        shown = f"process_raster of {params.container}/{params.blob_name}"
        return Owner(
            key=f"process_raster:{params.container}/{params.blob_name}:{params.options_key or 'default'}",
            description=shown + (f" with {json.dumps(options, sort_keys=True)}" if options else ""),
        )

    def take_over_outputs(self, ctx: TaskContext[ProcessRasterParameters]) -> str | None:
        """Become the writer of the job's collection before writing (see CollectionOwnership)."""
        params = ctx.job_parameters
        if self._ownership is None:
            return None
        return self._ownership.take_over(
            params.output_container, params.resolved_collection_id, self.owner(params), ctx.job_id
        )

    def cog_options(self, params: ProcessRasterParameters, metadata: RasterMetadata | None = None) -> CogOptions:
        resampling = params.overview_resampling or (
            default_overview_resampling(metadata) if metadata is not None else "average"
        )
        return CogOptions(
            compression=params.compression, overview_resampling=resampling, threads=self._options.gdal_threads
        )

    # --- submission ---------------------------------------------------------------------------

    def resolve_parameters(self, params: ProcessRasterParameters) -> ProcessRasterParameters:
        """Record the source's current etag (one HEAD request): a replaced source is a new job.

        A missing blob (or one storage refuses to describe) gets ``source_etag = null`` and the job
        fails in its validate stage with the reason, like any other bad input. A caller's own
        ``source_etag`` must be the current one (409 naming the field otherwise). Storage outages
        propagate (503)."""
        current = pin_source_etag(self._storage, params.container, params.blob_name, params.source_etag)
        if params.pgstac and not self.pgstac_enabled:
            raise InvalidRequestError(
                "pgstac is not enabled", details=[{"field": "pgstac", "message": "needs PGSTAC_ENABLED"}]
            )
        if self._ownership is not None:
            self._ownership.claim_at_submission(
                params.output_container, params.resolved_collection_id, self.owner(params)
            )
        return params.model_copy(update={"source_etag": current})

    def check_source_version(self, params: ProcessRasterParameters, etag: str | None = None) -> None:
        """Fail (permanently) when the source is no longer the version the job was submitted for;
        ``etag`` as just observed, else read now (a missing blob raises BlobNotFoundError)."""
        if "source_etag" not in params.model_fields_set:
            return  # submitted before sources were versioned: nothing to compare with
        if etag is None:
            etag = self._storage.properties(params.container, params.blob_name).etag
        current = unquoted_etag(etag)
        if current != params.source_etag:
            was = f"etag {params.source_etag}" if params.source_etag else "it did not exist"
            raise PermanentTaskError(f"the source changed after submission ({was}, now etag {current}); submit again")

    # --- handlers -----------------------------------------------------------------------------

    def validate(self, ctx: TaskContext[ProcessRasterParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        self.check_source_version(params)  # before reading: a replaced file is not "corrupt"
        report = validate_source(
            self._storage,
            params.source,
            assume_crs=params.assume_crs,
            options=self.cog_options(params),
            warp=params.warp_options,
        )
        self.check_source_version(params, report["source"]["etag"])
        return {**report, "observed_at": datetime.now(UTC).isoformat()}

    def plan(self, ctx: TaskContext[ProcessRasterParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        if ctx.predecessor_result is None:
            raise PermanentTaskError(f"task {ctx.task_id} has no validation result")
        metadata = RasterMetadata.from_dict(ctx.predecessor_result["metadata"])
        try:
            tiles = plan_tiles(
                metadata.width,
                metadata.height,
                metadata.count,
                metadata.itemsize,
                self._options.memory,
                tile_side=params.tile_size,
                max_tiles=self._options.max_tasks_per_stage,
                warp_scale=warp_scale_of(metadata.warp),  # a warped tile also holds GDAL's warp buffer
            )
        except TilingError as exc:
            raise PermanentTaskError(str(exc)) from exc
        self._storage.ensure_container(params.output_container)
        supersedes = self.take_over_outputs(ctx)  # before any cog task writes
        largest = max(tiles, key=lambda t: t.width * t.height)
        item_datetime = params.datetime.isoformat() if params.datetime else None
        return {
            "metadata": metadata.to_dict(),
            "item_datetime": item_datetime or metadata.acquired_at or ctx.predecessor_result["observed_at"],
            "overview_resampling": self.cog_options(params, metadata).overview_resampling,
            "tiles": [tile.to_dict() for tile in tiles],
            "estimated_task_peak_bytes": self._options.memory.tile_peak_bytes(
                largest.width,
                largest.height,
                metadata.count,
                metadata.itemsize,
                warp_scale=warp_scale_of(metadata.warp),
            ),
            "memory_budget_bytes": self._options.memory.budget_bytes,
            "supersedes": supersedes,
        }

    def convert(self, ctx: TaskContext[ProcessRasterParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        metadata = RasterMetadata.from_dict(ctx.parameters["metadata"])
        self.check_source_version(params)
        if self._ownership is not None:  # still the writer; its lease (COLLECTION_WRITER_LEASE_SECONDS) starts again
            self._ownership.renew(params.output_container, params.resolved_collection_id, ctx.job_id)
        result = convert_tile(
            self._storage,
            params.source,
            metadata,
            TileWindow.from_dict(ctx.parameters["window"]),
            BlobRef(params.output_container, tile_blob(params.blob_name, ctx.task_key, params.output_key)),
            self.cog_options(params, metadata),
            conversion_slots=self._conversion_slots,
            read_directly=self._options.read_directly,
            copy_whole_source=self._options.copy_whole_source,
        )
        # Replaced while GDAL read it (every read is uncached, see BlobStorage.gdal_options): the
        # committed tile may mix versions, and the job fails saying so.
        self.check_source_version(params)
        return {**result, "item_datetime": ctx.parameters["item_datetime"]}

    def catalog(self, ctx: TaskContext[ProcessRasterParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        tiles = [CatalogTile.from_result(key, result) for key, result in ctx.parameters["tiles"].items()]
        self.take_over_outputs(ctx)  # still the writer (a job planned before ownership was recorded claims here)
        published = publish_catalog(
            self._storage,
            params.source,
            tiles,
            output_container=params.output_container,
            collection_id=params.resolved_collection_id,
            output_key=params.output_key,
        )
        if params.pgstac and self._db is not None:  # last step: the catalog into pgstac (the STAC API)
            collection_blob = published["collection"]["blob"]
            published["pgstac"] = publish_catalog_to_pgstac(
                self._db, self._storage, params.output_container, collection_blob
            )
        return published

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(
        self, stage: int, params: ProcessRasterParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(SOURCE_KEY)]
        if stage == 2:
            return [TaskSpec(SOURCE_KEY, depends_on_predecessor=True)]
        if stage == 3:
            plan = previous_results[SOURCE_KEY]
            shared = {key: plan[key] for key in ("metadata", "item_datetime")}
            if len(plan["tiles"]) > self._options.max_tasks_per_stage:  # planned under a higher limit
                raise PermanentTaskError(
                    f"the plan has {len(plan['tiles']):,} tiles; the limit is {self._options.max_tasks_per_stage:,} "
                    "(MAX_TASKS_PER_STAGE): raise tile_size"
                )
            tiles = [TileWindow.from_dict(tile) for tile in plan["tiles"]]
            return [TaskSpec(tile.key, {**shared, "window": tile.to_dict()}) for tile in tiles]
        return [TaskSpec(CATALOG_KEY, {"tiles": {key: previous_results[key] for key in sorted(previous_results)}})]

    def finalize(self, params: ProcessRasterParameters, outcome: JobOutcome) -> dict[str, Any]:
        converted = outcome.results_by_stage.get("cog", {})
        catalog = outcome.results_by_stage.get("stac", {}).get(CATALOG_KEY, {})
        tiles = sorted(converted.values(), key=lambda r: (r["window"]["row"], r["window"]["col"]))
        return {
            "source": {**params.source.to_dict(), "etag": params.source_etag},
            "tiles": len(tiles),
            "supersedes": outcome.results_by_stage.get("plan", {}).get(SOURCE_KEY, {}).get("supersedes"),
            "outputs": {
                "cogs": [tile["cog"] for tile in tiles],
                "stac_collection": catalog.get("collection"),
                "stac_items": catalog.get("items", []),
                "mosaic_vrt": catalog.get("mosaic_vrt"),
                **({"pgstac": catalog["pgstac"]} if catalog.get("pgstac") else {}),
            },
        }
