"""process_rasters: every GeoTIFF under a prefix → COGs and ONE STAC collection (bulk process_raster).

Stages (task keys in brackets):
1. list [list]                 take over the collection's outputs, then page through the container
                               into chunks of blob names (blob_chunks, the listing jobs' machinery).
2. inspect [chunk_NNNNN]       one task per chunk: validate every file in place (process_raster's
                               ``validate_source``, 8 at a time) and plan its tiles; a file that
                               cannot be converted is recorded with a one-line reason, never raised.
3. convert [batch_NNNNN, file_CCCCC_IIIII_tile_rR_cC]
                               fanned out from the inspection records: small files grouped into
                               batches (by pixel bytes within the per-task memory model, at most
                               ``max_files_per_task``), converted one after another with
                               process_raster's ``convert_tile``; a file too big for one task gets one
                               task per tile. Per-file failures are recorded, never raised.
4. catalog [catalog, report]   ``catalog`` writes ONE collection with one item per output COG (and a
                               mosaic VRT per tiled file); ``report`` fails with the per-file reasons
                               when any file failed, so the job ends completed_with_errors (the
                               stage failure policy allows one of its two tasks to fail). Transient
                               errors propagate everywhere and retry the task.

Output paths and collection ownership follow process_raster's rules: each file goes where
process_raster would put it with these options and this collection id; the collection belongs to
this owner (job type, container, prefix, suffix, output options).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from controllers.collection_ownership import CollectionOwnership, Owner
from controllers.container_defaults import with_default_containers
from controllers.process_raster import RasterJobOptions
from controllers.process_rasters_plan import (
    FileRecords,
    FileRef,
    ProcessRastersParameters,
    batch_bytes_limit,
    inspection_plan,
    plan_convert_tasks,
)
from controllers.process_rasters_report import FileTally, publish_collection
from controllers.process_rasters_retry import (
    PUBLISHED_KEY,
    convert_failed_files,
    is_retry,
    mark_report_failed,
)
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.errors import InstanceBusyError, PermanentTaskError
from schemas.settings import Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.inventory.chunks import ChunkStore, chunk_keys
from services.raster.cog import CogOptions, default_overview_resampling
from services.raster.inspect import RasterMetadata
from services.raster.memory import track_peak_rss
from services.raster.pipeline import (
    BlobRef,
    convert_tile,
    tile_blob,
    validate_source,
)
from services.raster.tiling import TileWindow, TilingError, plan_tiles, warp_scale_of

LIST_KEY, CATALOG_KEY, REPORT_KEY = "list", "catalog", "report"
INSPECT_THREADS = 8  # files of one chunk validated at once (a few range reads each)
# A convert task finding every conversion slot of its process taken waits this long, then goes back to
# the queue for HAND_BACK_SECONDS (shorter than process_raster's tiles: a batch is seconds of work).
SLOT_WAIT_SECONDS = 1.0
HAND_BACK_SECONDS = (1.0, 3.0)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class ProcessRastersController(JobController[ProcessRastersParameters]):
    job_type = "process_rasters"
    description = "Every GeoTIFF under a prefix → COGs (small files batched, large ones tiled) and one STAC collection."
    # One of the catalog stage's two tasks (``report``) fails by design when files failed; a stage
    # with more than half its tasks failed fails the job (a listing, most chunks, a catalog).
    max_failure_ratio = 0.5
    # Per-file progress in GET /api/jobs/{id} while the job runs: inspect counts files (valid,
    # failed), convert counts conversions (a tiled file's tiles count one each).
    progress_counters = ("files", "valid", "converted", "failed")

    def __init__(
        self,
        storage: BlobStorage,
        database: Database,
        options: RasterJobOptions,
        conversion_slots: threading.Semaphore | None = None,
    ) -> None:
        self._storage = storage
        self._db = database
        self._options = options
        self._ownership = CollectionOwnership(database, options.writer_lease_seconds)
        # Shared with process_raster (registry): one process converts at most N files/tiles at once.
        self._slots = conversion_slots or threading.BoundedSemaphore(options.conversions_per_process)
        self.parameters_model = with_default_containers(
            ProcessRastersParameters,
            readable=options.readable_containers,
            writable=options.writable_containers,
            container=options.default_container,
            output_container=options.default_output_container,
        )
        self.stages = (
            StageDefinition("list", self.list_files),
            StageDefinition("inspect", self.inspect),
            StageDefinition("convert", self.convert),
            StageDefinition("catalog", self.finish),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        storage: BlobStorage,
        database: Database,
        conversion_slots: threading.Semaphore | None = None,
    ) -> ProcessRastersController:
        return cls(storage, database, RasterJobOptions.from_settings(settings, storage), conversion_slots)

    @staticmethod
    def owner(params: ProcessRastersParameters) -> Owner:
        """Who owns the collection: this listing (container, prefix, suffix) with these options."""
        shown = f"process_rasters of {params.listing_label}"
        options = params.conversion_options
        return Owner(
            key=f"process_rasters:{params.container}/{params.prefix}:{params.suffix or ''}:"
            f"{params.options_key or 'default'}",
            description=shown + (f" with {options}" if options else ""),
        )

    def resolve_parameters(self, params: ProcessRastersParameters) -> ProcessRastersParameters:
        """Claim the collection (409 naming collection_id when another owner has it)."""
        self._ownership.claim_at_submission(params.output_container, params.resolved_collection_id, self.owner(params))
        return params

    def cog_options(self, params: ProcessRastersParameters, metadata: RasterMetadata | None = None) -> CogOptions:
        resampling = params.overview_resampling or (
            default_overview_resampling(metadata) if metadata is not None else "average"
        )
        return CogOptions(
            compression=params.compression, overview_resampling=resampling, threads=self._options.gdal_threads
        )

    def take_over(self, ctx: TaskContext[ProcessRastersParameters]) -> str | None:
        params = ctx.job_parameters
        return self._ownership.take_over(
            params.output_container, params.resolved_collection_id, self.owner(params), ctx.job_id
        )

    # --- handlers -----------------------------------------------------------------------------

    def list_files(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        self._storage.ensure_container(params.output_container)
        supersedes = self.take_over(ctx)  # before any COG of this owner is written
        listed = ChunkStore(self._db, ctx.job_id).list_into_chunks(
            self._storage, params, max_chunks=self._options.max_tasks_per_stage
        )
        if not listed["blobs"]:
            wanted = f"ends with {params.suffix!r}" if params.suffix else "ends with .tif or .tiff"
            raise PermanentTaskError(f"no blob under {params.container}/{params.prefix} {wanted}")
        return {**listed, "supersedes": supersedes}

    def inspect_file(self, params: ProcessRastersParameters, blob: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"name": blob["name"], "bytes": blob["size"]}
        try:
            report = validate_source(
                self._storage,
                BlobRef(params.container, blob["name"]),
                assume_crs=params.assume_crs,
                options=self.cog_options(params),
                warp=params.warp_options,
            )
            metadata = RasterMetadata.from_dict(report["metadata"])
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
        except (PermanentTaskError, TilingError) as exc:
            return {**record, "error": one_line(exc)}
        observed = datetime.now(UTC).isoformat()
        return {
            **record,
            "etag": report["source"]["etag"],
            "metadata": report["metadata"],
            "pixel_bytes": metadata.uncompressed_bytes,
            "tiles": [tile.to_dict() for tile in tiles],
            "item_datetime": params.datetime.isoformat() if params.datetime else metadata.acquired_at or observed,
        }

    def inspect(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        store = ChunkStore(self._db, ctx.job_id)
        blobs = store.blobs(ctx.task_key)
        with ThreadPoolExecutor(INSPECT_THREADS, thread_name_prefix="inspect") as pool:
            records = list(pool.map(lambda blob: self.inspect_file(ctx.job_parameters, blob), blobs))
        store.save_results(ctx.task_key, records)
        valid = [r for r in records if "metadata" in r]
        return {
            "files": len(records),
            "valid": len(valid),
            "failed": len(records) - len(valid),
            "tiled": sum(1 for r in valid if len(r["tiles"]) > 1),
            "pixel_bytes": sum(r["pixel_bytes"] for r in valid),
            "plan": inspection_plan(records),
        }

    def convert_file(
        self, params: ProcessRastersParameters, record: dict[str, Any], window: dict[str, int] | None
    ) -> dict[str, Any]:
        name = record["name"]
        metadata = RasterMetadata.from_dict(record["metadata"])
        tile = TileWindow.from_dict(window) if window else TileWindow(0, 0, 0, 0, metadata.width, metadata.height)
        source = BlobRef(params.container, name)
        output = BlobRef(params.output_container, tile_blob(name, tile.key, params.output_key(name)))
        base = {"name": name, "tile": tile.key, "tiles": len(record["tiles"])}
        try:
            result = convert_tile(
                self._storage,
                source,
                metadata,
                tile,
                output,
                self.cog_options(params, metadata),
                conversion_slots=threading.Semaphore(1),  # this task holds the process's slot
                read_directly=self._options.read_directly,
            )
            etag = self._storage.properties(params.container, name).etag
        except PermanentTaskError as exc:
            return {**base, "error": one_line(exc)}
        if etag != record["etag"]:
            return {
                **base,
                "error": f"the source changed after it was inspected (etag {record['etag']}, now {etag}); "
                "submit again with replace: true",
            }
        return {
            **base,
            "etag": etag,
            "cog": result["cog"],
            "window": result["window"],
            "metadata": result["metadata"],
            "item_datetime": record["item_datetime"],
            "seconds": result["seconds"],
        }

    def convert(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        # Still the writer (a stuck job's lapsed lease lets another take over); its lease starts again.
        self._ownership.renew(params.output_container, params.resolved_collection_id, ctx.job_id)
        records = FileRecords(self._db, ctx.job_id)
        chunks: dict[str, list[dict[str, Any]]] = {}

        def record_of(ref: FileRef) -> dict[str, Any]:
            if ref.chunk not in chunks:
                row = records.row(ref.chunk)
                if row is None or row["results"] is None:
                    raise PermanentTaskError(f"job {ctx.job_id} has no inspection of {ref.chunk}")
                chunks[ref.chunk] = row["results"]
            return chunks[ref.chunk][ref.index]

        refs = [FileRef.from_list(value) for value in ctx.parameters["files"]]
        started = time.perf_counter()
        with self.conversion_slot(), track_peak_rss() as rss:
            outputs = [self.convert_file(params, record_of(ref), ctx.parameters.get("window")) for ref in refs]
        records.save_outputs(ctx.task_key, outputs)
        failed = sum(1 for output in outputs if "error" in output)
        return {
            "files": len(outputs),
            "converted": len(outputs) - failed,
            "failed": failed,
            "peak_rss_bytes": rss.peak_bytes,
            "process_id": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3),
        }

    @contextmanager
    def conversion_slot(self) -> Iterator[None]:
        """Hold one of the process's conversion slots for the whole task (its files are converted one
        after another). Busy for SLOT_WAIT_SECONDS → the task goes back to the queue for a few
        seconds, without counting an attempt: the host hands a fan-out's messages to whichever
        worker polls first, and a batch waiting in a busy worker is better run by an idle one."""
        if not self._slots.acquire(timeout=SLOT_WAIT_SECONDS):
            raise InstanceBusyError(
                f"every conversion slot of this instance stayed busy for {SLOT_WAIT_SECONDS:.0f}s",
                retry_after=random.uniform(*HAND_BACK_SECONDS),
            )
        try:
            yield
        finally:
            self._slots.release()

    def finish(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        if ctx.task_key == REPORT_KEY:
            return self.report(ctx)
        return self.catalog(ctx)

    def catalog(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        self.take_over(ctx)  # still the writer
        return {**self.publish(ctx), "job_id": ctx.job_id}

    def publish(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        """The collection from the job's records; its summary is also kept for the finalizer."""
        params, records = ctx.job_parameters, FileRecords(self._db, ctx.job_id)
        tally = FileTally()
        published = publish_collection(self._storage, params, tally, records)
        if published is None:
            raise PermanentTaskError(f"no file under {params.listing_label} was converted: {tally.summary()}")
        summary = {**published, "files": tally.counts(), "failed_files": tally.failed}
        records.save_note(PUBLISHED_KEY, summary)
        return summary

    def report(self, ctx: TaskContext[ProcessRastersParameters]) -> dict[str, Any]:
        """Fails with the per-file reasons when files failed; run again by a retry of the job, it
        first converts the failed files again (controllers/process_rasters_retry.py)."""
        params, records = ctx.job_parameters, FileRecords(self._db, ctx.job_id)
        tally = FileTally.scan(records)
        if not tally.failed_count:
            return {"files": tally.counts()}
        if not is_retry(records):
            mark_report_failed(records, tally.failed_count)
            raise PermanentTaskError(tally.summary())
        self.take_over(ctx)  # still the writer
        with self.conversion_slot():
            retried = convert_failed_files(
                records,
                tally.failed_names,
                inspect=lambda blob: self.inspect_file(params, blob),
                convert=lambda record, window: self.convert_file(params, record, window),
            )
        summary = self.publish(ctx)
        ctx.logger.info("retry: %s; now %s", retried, summary["files"])
        if summary["files"]["failed"]:
            raise PermanentTaskError(FileTally.scan(records).summary())
        return {"files": summary["files"], **retried}

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(
        self, stage: int, params: ProcessRastersParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(LIST_KEY)]
        if stage == 2:
            count = int(previous_results[LIST_KEY]["chunk_count"])
            return [TaskSpec(key) for key in chunk_keys(count, params.chunk_size, self._options.max_tasks_per_stage)]
        if stage == 3:
            inspected = [(key, previous_results[key]["plan"]) for key in sorted(previous_results)]
            tasks = plan_convert_tasks(
                inspected,
                max_bytes=batch_bytes_limit(self._options.memory),
                max_files=params.max_files_per_task,
            )
            if len(tasks) > self._options.max_tasks_per_stage:
                raise PermanentTaskError(
                    f"the conversion needs {len(tasks):,} tasks; the limit is {self._options.max_tasks_per_stage:,} "
                    "(MAX_TASKS_PER_STAGE): raise max_files_per_task or narrow the prefix"
                )
            return [TaskSpec(task.key, task.parameters()) for task in tasks]
        return [TaskSpec(CATALOG_KEY), TaskSpec(REPORT_KEY)]

    def finalize(self, params: ProcessRastersParameters, outcome: JobOutcome) -> dict[str, Any]:
        catalog = outcome.results_by_stage.get("catalog", {}).get(CATALOG_KEY)
        if catalog is None:
            reason = outcome.failed_by_stage.get("catalog", {}).get(CATALOG_KEY, "the catalog task did not complete")
            raise PermanentTaskError(reason)
        if "job_id" in catalog:  # a retried report may have published the collection again since
            catalog = FileRecords(self._db, catalog["job_id"]).note(PUBLISHED_KEY) or catalog
        listed = outcome.results_by_stage.get("list", {}).get(LIST_KEY, {})
        return {
            "source": {"container": params.container, "prefix": params.prefix, "suffix": params.suffix},
            "files": catalog["files"],
            "failed_files": catalog["failed_files"],
            "supersedes": listed.get("supersedes"),
            "outputs": {key: catalog[key] for key in ("collection", "items", "cogs", "cog_bytes", "mosaic_vrts")},
        }
