"""extract_metadata: the raster metadata record (services/raster/inspect.py) of one blob, or of
every blob under a prefix, fanned out in chunks.

Stages (task keys in brackets):
1. list [list]           ``blob_name``: that blob's properties as the only chunk; ``prefix``: the
                         shared chunked listing (services/inventory/chunks.py).
2. extract [chunk_NNNNN] one task per chunk: probe each blob with the full metadata record; results
                         go back to the chunk row.
3. write [output]        one blob: its entry is the job result (an unreadable or non-raster blob
                         fails the job with the reason); a prefix: every entry as JSON Lines at
                         {output_container}/metadata/{container}/{job_id}.jsonl, counts in the result.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controllers.container_defaults import deployment_parameters_model
from controllers.inventory_container import probe_chunk
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.blob_names import BlobPath, ContainerName
from schemas.errors import PermanentTaskError
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.inventory.chunks import BlobPrefix, ChunkStore, ListingParameters, chunk_keys
from services.inventory.probe import KIND_RASTER
from services.inventory.report import flatten, write_jsonl

LIST_KEY = "list"
OUTPUT_KEY = "output"


class ExtractMetadataParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container: ContainerName = Field(default="bronze", description="Container holding the rasters.")
    blob_name: BlobPath | None = Field(default=None, description="One blob (exactly one of blob_name, prefix).")
    prefix: BlobPrefix | None = Field(
        default=None, max_length=1024, description="Every blob under this prefix (exactly one of blob_name, prefix)."
    )
    chunk_size: int = Field(default=1000, ge=1, le=10_000, description="Blobs per chunk task (prefix only).")
    output_container: ContainerName = Field(default="silver", description="Container for the JSON Lines output.")

    @model_validator(mode="after")
    def _exactly_one_target(self) -> ExtractMetadataParameters:
        if (self.blob_name is None) == (self.prefix is None):
            raise ValueError("give exactly one of blob_name and prefix")
        return self

    def listing(self) -> ListingParameters:
        return ListingParameters(container=self.container, prefix=self.prefix or "", chunk_size=self.chunk_size)


def metadata_blob(container: str, job_id: str) -> str:
    return f"metadata/{container}/{job_id}.jsonl"


class ExtractMetadataController(JobController[ExtractMetadataParameters]):
    job_type = "extract_metadata"
    description = "Raster metadata records of one blob, or of every blob under a prefix (chunked, JSON Lines)."
    parameters_model = ExtractMetadataParameters

    def __init__(
        self, storage: BlobStorage, database: Database, *, max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE
    ) -> None:
        self._storage = storage
        self._db = database
        self._max_chunks = max_tasks_per_stage  # chunk tasks of one listing (MAX_TASKS_PER_STAGE)
        self.stages = (
            StageDefinition("list", self.list_blobs),
            StageDefinition("extract", self.extract),
            StageDefinition("write", self.write),
        )

    @classmethod
    def from_settings(cls, settings: Settings, storage: BlobStorage, database: Database) -> ExtractMetadataController:
        controller = cls(storage, database, max_tasks_per_stage=settings.max_tasks_per_stage)
        controller.parameters_model = deployment_parameters_model(cls.parameters_model, settings)
        return controller

    def list_blobs(self, ctx: TaskContext[ExtractMetadataParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        store = ChunkStore(self._db, ctx.job_id)
        if params.blob_name is not None:
            return store.store_blobs([self._storage.properties(params.container, params.blob_name)])
        return store.list_into_chunks(self._storage, params.listing(), max_chunks=self._max_chunks)

    def extract(self, ctx: TaskContext[ExtractMetadataParameters]) -> dict[str, Any]:
        store = ChunkStore(self._db, ctx.job_id)
        entries = probe_chunk(
            self._storage, ctx.job_parameters.container, store.blobs(ctx.task_key), full_metadata=True
        )
        store.save_results(ctx.task_key, entries)
        return {"blobs": len(entries), "by_kind": dict(sorted(Counter(e["kind"] for e in entries).items()))}

    def write(self, ctx: TaskContext[ExtractMetadataParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        store = ChunkStore(self._db, ctx.job_id)
        if params.blob_name is not None:
            entry = next(flatten(store.iter_results()))
            if entry["kind"] != KIND_RASTER:
                reason = entry.get("error") or "not a GeoTIFF (extension and magic bytes)"
                raise PermanentTaskError(f"{params.container}/{params.blob_name}: {reason}")
            return {"blob": entry}
        kinds: Counter[str] = Counter()

        def entries() -> Any:
            for entry in flatten(store.iter_results()):
                kinds[entry["kind"]] += 1
                yield entry

        uploaded = write_jsonl(
            self._storage, params.output_container, metadata_blob(params.container, ctx.job_id), entries()
        )
        return {"blobs": sum(kinds.values()), "by_kind": dict(sorted(kinds.items())), "output": uploaded.as_output()}

    def create_tasks(
        self, stage: int, params: ExtractMetadataParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(LIST_KEY)]
        if stage == 2:
            count = int(previous_results[LIST_KEY]["chunk_count"])
            return [TaskSpec(key) for key in chunk_keys(count, params.chunk_size, self._max_chunks)]
        return [TaskSpec(OUTPUT_KEY)]

    def finalize(self, params: ExtractMetadataParameters, outcome: JobOutcome) -> dict[str, Any]:
        return dict(outcome.results_by_stage.get("write", {}).get(OUTPUT_KEY, {}))
