"""validate_stac: offline validation of the STAC objects in a container, in chunks.

Stages (task keys in brackets):
1. list [list]            the *.json blobs under ``prefix`` (the shared chunked listing), or, with
                          ``catalog``, every object its child/item links reach within the container,
                          stored in chunks of ``chunk_size`` (blob_chunks).
2. validate [chunk_NNNNN] one task per chunk: download each object, the STAC 1.1.0 core schema and every
                          declared extension's bundled schema (an unknown one is reported, never
                          fetched), links and assets resolved in the container, file:size and
                          file:checksum against the blobs, best-practice lint. Objects with problems go
                          back to the chunk row; counts are the task result.
3. report [report]        problems grouped by type (up to ``max_paths_per_error`` paths each) and the JSON
                          Lines report (one line per object with problems) at
                          {output_container}/validation/{container}/{job_id}.jsonl.

Invalid STAC is a finding: the job completes. A missing catalog blob or bad parameters fail it (400).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from controllers.container_defaults import with_default_containers
from controllers.validate_stac_chunk import validate_chunk
from controllers.validate_stac_parameters import ValidateStacParameters
from controllers.validate_stac_run import ContainerIndex, walk_catalog
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.inventory.chunks import MAX_CHUNKS, ChunkStore, ListingParameters, chunk_key, chunk_keys
from services.inventory.report import flatten, write_jsonl

LIST_KEY = "list"
REPORT_KEY = "report"
STAC_SUFFIX = ".json"
COUNT_FIELDS = ("objects", "valid", "checksums_verified", "checksums_not_verified")


def report_blob(container: str, job_id: str) -> str:
    return f"validation/{container}/{job_id}.jsonl"


class ValidateStacController(JobController[ValidateStacParameters]):
    job_type = "validate_stac"
    description = (
        "Offline STAC 1.1 validation of a prefix or a catalog tree: schemas, extensions, links, assets, "
        "checksums, lint; a JSON Lines report."
    )
    parameters_model = ValidateStacParameters

    def __init__(
        self, storage: BlobStorage, database: Database, *, max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE
    ) -> None:
        self._storage = storage
        self._db = database
        self._max_chunks = min(max_tasks_per_stage, MAX_CHUNKS)
        self.stages = (
            StageDefinition("list", self.list_objects),
            StageDefinition("validate", self.validate),
            StageDefinition("report", self.report),
        )

    @classmethod
    def from_settings(cls, settings: Settings, storage: BlobStorage, database: Database) -> ValidateStacController:
        """STAC is read where jobs write it: the container may be any readable or writable one."""
        controller = cls(storage, database, max_tasks_per_stage=settings.max_tasks_per_stage)
        controller.parameters_model = with_default_containers(
            cls.parameters_model,
            readable=tuple(dict.fromkeys(settings.readable_containers + settings.writable_containers)),
            writable=settings.writable_containers,
            container=settings.silver_container,
            output_container=settings.silver_container,
        )
        return controller

    def _container_url(self, container: str) -> str:
        """Absolute hrefs under this URL name blobs of the container (checked like relative ones)."""
        return str(self._storage.client.get_container_client(container).url)

    # --- handlers -----------------------------------------------------------------------------

    def list_objects(self, ctx: TaskContext[ValidateStacParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        store = ChunkStore(self._db, ctx.job_id)
        if params.catalog is None:
            listing = ListingParameters(
                container=params.container, prefix=params.prefix or "", suffix=STAC_SUFFIX, chunk_size=params.chunk_size
            )
            return store.list_into_chunks(self._storage, listing, max_chunks=self._max_chunks)
        index = ContainerIndex(self._storage, params.container)
        found = walk_catalog(
            self._storage, params.container, params.catalog, limit=self._max_chunks * params.chunk_size, index=index
        )
        with self._db.transaction() as repo:
            repo.delete_blob_chunks(ctx.job_id)
            for number, start in enumerate(range(0, len(found), params.chunk_size)):
                repo.insert_blob_chunk(ctx.job_id, chunk_key(number), found[start : start + params.chunk_size])
        chunk_count = -(-len(found) // params.chunk_size)
        return {"chunk_count": chunk_count, "blobs": len(found), "bytes": sum(b["size"] for b in found)}

    def validate(self, ctx: TaskContext[ValidateStacParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        store = ChunkStore(self._db, ctx.job_id)
        outcome = validate_chunk(
            self._storage,
            params.container,
            store.blobs(ctx.task_key),
            container_url=self._container_url(params.container),
            verify_checksums=params.verify_checksums,
            max_checksum_bytes=params.max_checksum_bytes,
        )
        store.save_results(ctx.task_key, outcome.records)
        return outcome.summary()

    def report(self, ctx: TaskContext[ValidateStacParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        errors: dict[str, dict[str, Any]] = {}

        def records() -> Iterator[dict[str, Any]]:
            for record in flatten(ChunkStore(self._db, ctx.job_id).iter_results()):
                occurrences = Counter(problem["type"] for problem in record["problems"])
                for kind, count in occurrences.items():
                    group = errors.setdefault(kind, {"objects": 0, "occurrences": 0, "paths": []})
                    group["objects"] += 1
                    group["occurrences"] += count
                    if len(group["paths"]) < params.max_paths_per_error:
                        group["paths"].append(record["path"])
                yield record

        uploaded = write_jsonl(
            self._storage, params.output_container, report_blob(params.container, ctx.job_id), records()
        )
        return {"errors": dict(sorted(errors.items())), "report": uploaded.as_output()}

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(
        self, stage: int, params: ValidateStacParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(LIST_KEY)]
        if stage == 2:
            count = max(1, int(previous_results[LIST_KEY]["chunk_count"]))
            return [TaskSpec(key) for key in chunk_keys(count, params.chunk_size, self._max_chunks)]
        return [TaskSpec(REPORT_KEY)]

    def finalize(self, params: ValidateStacParameters, outcome: JobOutcome) -> dict[str, Any]:
        chunks = outcome.results_by_stage.get("validate", {})
        counts = {name: sum(int(r.get(name, 0)) for r in chunks.values()) for name in COUNT_FIELDS}
        by_type: Counter[str] = Counter()
        for result in chunks.values():
            by_type.update(result.get("by_stac_type", {}))
        report = outcome.results_by_stage.get("report", {}).get(REPORT_KEY, {})
        listed = outcome.results_by_stage.get("list", {}).get(LIST_KEY, {})
        rates = {
            name: [r[name] for r in chunks.values() if r.get(name)]
            for name in ("objects_per_second", "checks_per_second")
        }
        return {
            "container": params.container,
            "prefix": params.prefix if params.catalog is None else None,
            "catalog": params.catalog,
            **counts,
            "invalid": counts["objects"] - counts["valid"],
            "by_stac_type": dict(sorted(by_type.items())),
            "errors": report.get("errors", {}),
            "report": report.get("report"),
            "chunks": int(listed.get("chunk_count", len(chunks))),
            # the slowest task's rates: whole task (downloads, listings, checks, checksums) and checks alone
            "objects_per_second_per_task": min(rates["objects_per_second"], default=None),
            "checks_per_second_per_task": min(rates["checks_per_second"], default=None),
        }
