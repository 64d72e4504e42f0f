"""inventory_container: what a container holds, listed in chunks, rasters' headers read in place.

Stages (task keys in brackets):
1. list [list]           page through the container (prefix, suffix filter) and store the blobs in
                         chunks of ``chunk_size`` in Postgres (blob_chunks), not in messages/results.
2. probe [chunk_NNNNN]   one task per chunk: each blob's properties and, for GeoTIFFs, the header
                         through /vsiaz/ (size, bands, dtype, CRS, bounds, compression, COG or not);
                         unreadable files are recorded with the reason. Results go back to the chunk row.
3. summary [summary]     counts and bytes by extension and kind, COGs, unreadable files; the full
                         inventory as JSON Lines at {output_container}/inventories/{container}/{job_id}.jsonl.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from controllers.container_defaults import deployment_parameters_model
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.blob_names import ContainerName
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.inventory.chunks import ChunkStore, ListingParameters, chunk_keys
from services.inventory.probe import probe_blob
from services.inventory.report import InventorySummary, flatten, write_jsonl

LIST_KEY = "list"
SUMMARY_KEY = "summary"
PROBE_THREADS = 8  # blobs of one chunk probed at once (each is a few range reads)


class InventoryContainerParameters(ListingParameters):
    output_container: ContainerName = Field(default="silver", description="Container for the JSON Lines inventory.")


def inventory_blob(container: str, job_id: str) -> str:
    return f"inventories/{container}/{job_id}.jsonl"


def probe_chunk(
    storage: BlobStorage, container: str, blobs: list[dict[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    """Probe every blob of a chunk, a few at a time; entries in listing order."""
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        return list(pool.map(lambda blob: probe_blob(storage, container, blob, **options), blobs))


class InventoryContainerController(JobController[InventoryContainerParameters]):
    job_type = "inventory_container"
    description = "Inventory of a container's blobs in chunks: kinds, sizes, raster headers, COG or not."
    parameters_model = InventoryContainerParameters

    def __init__(
        self, storage: BlobStorage, database: Database, *, max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE
    ) -> None:
        self._storage = storage
        self._db = database
        self._max_chunks = max_tasks_per_stage  # chunk tasks of one listing (MAX_TASKS_PER_STAGE)
        self.stages = (
            StageDefinition("list", self.list_blobs),
            StageDefinition("probe", self.probe),
            StageDefinition("summary", self.summarise),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, storage: BlobStorage, database: Database
    ) -> InventoryContainerController:
        controller = cls(storage, database, max_tasks_per_stage=settings.max_tasks_per_stage)
        controller.parameters_model = deployment_parameters_model(cls.parameters_model, settings)
        return controller

    # --- handlers -----------------------------------------------------------------------------

    def list_blobs(self, ctx: TaskContext[InventoryContainerParameters]) -> dict[str, Any]:
        return ChunkStore(self._db, ctx.job_id).list_into_chunks(
            self._storage, ctx.job_parameters, max_chunks=self._max_chunks
        )

    def probe(self, ctx: TaskContext[InventoryContainerParameters]) -> dict[str, Any]:
        store = ChunkStore(self._db, ctx.job_id)
        entries = probe_chunk(self._storage, ctx.job_parameters.container, store.blobs(ctx.task_key))
        store.save_results(ctx.task_key, entries)
        kinds = Counter(entry["kind"] for entry in entries)
        return {"blobs": len(entries), "by_kind": dict(sorted(kinds.items()))}

    def summarise(self, ctx: TaskContext[InventoryContainerParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        summary = InventorySummary()

        def entries() -> Any:
            for entry in flatten(ChunkStore(self._db, ctx.job_id).iter_results()):
                summary.add(entry)
                yield entry

        uploaded = write_jsonl(
            self._storage, params.output_container, inventory_blob(params.container, ctx.job_id), entries()
        )
        return {"summary": summary.to_dict(), "inventory": uploaded.as_output()}

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(
        self, stage: int, params: InventoryContainerParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(LIST_KEY)]
        if stage == 2:
            count = int(previous_results[LIST_KEY]["chunk_count"])
            return [TaskSpec(key) for key in chunk_keys(count, params.chunk_size, self._max_chunks)]
        return [TaskSpec(SUMMARY_KEY)]

    def finalize(self, params: InventoryContainerParameters, outcome: JobOutcome) -> dict[str, Any]:
        result = outcome.results_by_stage.get("summary", {}).get(SUMMARY_KEY, {})
        return {
            "container": params.container,
            "prefix": params.prefix,
            "summary": result.get("summary"),
            "inventory": result.get("inventory"),
        }
