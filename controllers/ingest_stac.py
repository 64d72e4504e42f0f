"""ingest_stac: STAC collections and items from blob storage into pgstac (pypgstac's loader, COPY).

Stages (task keys in brackets):
1. list [list]                 ``prefix``: every ``.json`` / ``.ndjson`` blob under it (``collection.json``
                               blobs are the collections, the rest item files); ``catalog``: the blobs
                               reachable from that catalog or collection through relative child/item
                               links. Item blobs go to Postgres in chunks (``blob_chunks``), collection
                               blobs to the chunk ``collections``.
2. collections [collections]   loads the collections first, with the mode.
3. items [chunk_NNNNN]         one task per chunk: reads its blobs (16 at a time) and loads their items.

Idempotent on retry: a chunk (and the collections) is loaded in one transaction that also marks its
``blob_chunks`` row loaded, so a retried task whose load committed finds the mark and loads nothing
again (also in ``insert`` mode, which would otherwise fail on its own rows).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controllers.container_defaults import with_default_containers
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from repositories.engine_repository import EngineRepository
from schemas.blob_names import ContainerName
from schemas.errors import PermanentTaskError
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.inventory.chunks import BlobPrefix, ChunkStore, chunk_keys, iter_listing
from services.inventory.chunks import ListingParameters as _Listing
from services.stac.item_formatting import gc_paused, preparing_items
from services.stac.pgstac_loader import (
    ITEM_LINES_SUFFIXES,
    ItemBatch,
    load_collections,
    load_items,
    pgstac_transaction,
    read_documents,
    read_one,
    standalone,
    walk_catalog,
)

LIST_KEY = "list"
COLLECTIONS_KEY = "collections"
COLLECTION_FILE = "collection.json"
MAX_COLLECTIONS = 1000


class IngestStacParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container: ContainerName = Field(default="silver", description="Container holding the STAC documents.")
    prefix: BlobPrefix | None = Field(
        default=None,
        max_length=1024,
        description="Load every .json/.ndjson blob under this prefix: collection.json blobs as collections, "
        "the others as items (one item per blob, or one per line for .ndjson/.jsonl).",
    )
    catalog: BlobPrefix | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Load what this catalog.json or collection.json links (child and item links, relative).",
    )
    mode: Literal["insert", "upsert", "ignore", "delsert"] = Field(
        default="upsert", description="pypgstac's load mode for existing ids."
    )
    chunk_size: int = Field(default=1000, ge=1, le=10_000, description="Item blobs per load task.")

    @model_validator(mode="after")
    def _one_source(self) -> IngestStacParameters:
        if (self.prefix is None) == (self.catalog is None):
            raise ValueError("give exactly one of prefix and catalog")
        return self


class IngestStacController(JobController[IngestStacParameters]):
    job_type = "ingest_stac"
    description = "STAC collections and items from blob storage into pgstac (COPY), fanned out per chunk."
    parameters_model = IngestStacParameters

    def __init__(
        self, storage: BlobStorage, database: Database, *, max_tasks_per_stage: int = DEFAULT_MAX_TASKS_PER_STAGE
    ) -> None:
        self._storage = storage
        self._db = database
        self._max_chunks = max_tasks_per_stage
        self.stages = (
            StageDefinition("list", self.list_documents),
            StageDefinition("collections", self.collections),
            StageDefinition("items", self.items),
        )

    @classmethod
    def from_settings(cls, settings: Settings, storage: BlobStorage, database: Database) -> IngestStacController:
        controller = cls(storage, database, max_tasks_per_stage=settings.max_tasks_per_stage)
        readable = tuple(dict.fromkeys((*settings.readable_containers, *settings.writable_containers)))
        controller.parameters_model = with_default_containers(
            cls.parameters_model, readable=readable, container=settings.silver_container
        )
        return controller

    # --- stage 1 ------------------------------------------------------------------------------

    def list_documents(self, ctx: TaskContext[IngestStacParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        if params.catalog is not None:
            collections, items = walk_catalog(
                lambda name: read_one(self._storage, params.container, name), params.catalog
            )
        else:
            collections, items = [], []
            listing = _Listing(container=params.container, prefix=params.prefix or "")
            for blob in iter_listing(self._storage, listing):
                name = blob.name.lower()
                if name.rsplit("/", 1)[-1] == COLLECTION_FILE:
                    collections.append(blob.name)
                elif name.endswith((".json", *ITEM_LINES_SUFFIXES)):
                    items.append(blob.name)
        if len(collections) > MAX_COLLECTIONS:
            raise PermanentTaskError(f"{len(collections):,} collections; the limit is {MAX_COLLECTIONS:,} per job")
        chunks = [items[i : i + params.chunk_size] for i in range(0, len(items), params.chunk_size)]
        keys = chunk_keys(len(chunks), params.chunk_size, self._max_chunks)
        with self._db.transaction() as repo:  # a retried listing replaces the job's chunks
            repo.delete_blob_chunks(ctx.job_id)
            repo.insert_blob_chunk(ctx.job_id, COLLECTIONS_KEY, [{"name": n} for n in collections])
            for key, names in zip(keys, chunks, strict=True):
                repo.insert_blob_chunk(ctx.job_id, key, [{"name": n} for n in names])
        return {"collections": len(collections), "item_blobs": len(items), "chunk_count": len(chunks)}

    # --- stages 2 and 3 -------------------------------------------------------------------------

    def _loaded(self, job_id: str, key: str) -> dict[str, Any] | None:
        with self._db.statements() as repo:
            row = repo.get_blob_chunk(job_id, key)
        if row is None:
            raise PermanentTaskError(f"job {job_id} has no chunk {key}")
        results = row["results"]
        return dict(results[0]) if results else None

    def _load(self, ctx: TaskContext[IngestStacParameters], names: list[str], collections: bool) -> dict[str, Any]:
        """Read the blobs, load them and mark the chunk loaded, in one transaction."""
        params = ctx.job_parameters
        batch = ItemBatch()
        docs: list[dict[str, Any]] = []
        with gc_paused():  # downloaded and parsed 16 blobs at a time, not under the preparation slot
            documents = list(read_documents(self._storage, params.container, names))
        with preparing_items():  # CPU-bound, one chunk at a time per process (item_formatting)
            for name, url, found in documents:
                for doc in found:
                    if not collections:
                        batch.add(name, doc, url)
                    elif doc.get("type") == "Collection":
                        docs.append(standalone(doc, url))
                    else:
                        batch.skip(f"{name}: type {doc.get('type')!r} is not a collection")
        with pgstac_transaction(self._db) as conn:
            repo = EngineRepository(conn)
            row = repo.get_blob_chunk(ctx.job_id, ctx.task_key)
            if row is not None and row["results"]:  # a concurrent or earlier delivery committed it
                return dict(row["results"][0])
            if collections:
                loaded = load_collections(conn, docs, params.mode)
            else:
                loaded = load_items(conn, batch.items, params.mode)
            result = {"loaded": loaded, "skipped": batch.skipped, "skip_reasons": batch.reasons}
            repo.save_blob_chunk_results(ctx.job_id, ctx.task_key, [result])
        return result

    def collections(self, ctx: TaskContext[IngestStacParameters]) -> dict[str, Any]:
        chunk_count = {"chunk_count": int(ctx.parameters["chunk_count"])}
        done = self._loaded(ctx.job_id, COLLECTIONS_KEY)
        if done is not None:
            return {**done, **chunk_count}
        names = [b["name"] for b in ChunkStore(self._db, ctx.job_id).blobs(COLLECTIONS_KEY)]
        return {**self._load(ctx, names, collections=True), **chunk_count}

    def items(self, ctx: TaskContext[IngestStacParameters]) -> dict[str, Any]:
        done = self._loaded(ctx.job_id, ctx.task_key)
        if done is not None:
            return done
        names = [b["name"] for b in ChunkStore(self._db, ctx.job_id).blobs(ctx.task_key)]
        return self._load(ctx, names, collections=False)

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(self, stage: int, params: IngestStacParameters, previous_results: StageResults) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(LIST_KEY)]
        if stage == 2:  # the chunk count travels through the collections task to the items fan-out
            return [TaskSpec(COLLECTIONS_KEY, {"chunk_count": int(previous_results[LIST_KEY]["chunk_count"])})]
        count = int(previous_results[COLLECTIONS_KEY]["chunk_count"])
        return [TaskSpec(key) for key in chunk_keys(count, params.chunk_size, self._max_chunks)]

    def finalize(self, params: IngestStacParameters, outcome: JobOutcome) -> dict[str, Any]:
        listed = outcome.results_by_stage.get("list", {}).get(LIST_KEY, {})
        collections = outcome.results_by_stage.get("collections", {}).get(COLLECTIONS_KEY, {})
        chunks = outcome.results_by_stage.get("items", {})
        reasons = [r for c in chunks.values() for r in c.get("skip_reasons", [])][:20]
        return {
            "mode": params.mode,
            "item_blobs": listed.get("item_blobs", 0),
            "collections": collections.get("loaded", 0),
            "items": sum(int(c.get("loaded", 0)) for c in chunks.values()),
            "skipped": sum(int(c.get("skipped", 0)) for c in chunks.values()) + int(collections.get("skipped", 0)),
            "skip_reasons": [*collections.get("skip_reasons", []), *reasons][:20],
        }
