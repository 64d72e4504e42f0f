"""Listing a container into chunks stored in Postgres, shared by the listing job types
(inventory_container, extract_metadata, catalog_container).

A container can hold hundreds of thousands of blobs, so neither one task per blob nor one task for
everything works. The "list" task pages through the container and stores the blobs in chunks of
``chunk_size`` (table ``blob_chunks``); the next stage gets one task per chunk (``chunk_00000``…),
which reads its blobs from Postgres and writes its results back to the same row. Queue messages
and task results only ever carry chunk keys and counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from repositories.blob_storage import BlobInfo, BlobStorage
from repositories.database import Database
from schemas.blob_names import ContainerName, blob_path_problem
from schemas.errors import PermanentTaskError

CHUNK_KEY_PREFIX = "chunk_"
LIST_PAGE_SIZE = 5000
MAX_CHUNKS = 100_000  # chunk keys have five digits; MAX_TASKS_PER_STAGE (at most this) is the real limit


def _check_prefix(prefix: str) -> str:
    """A prefix is empty or a blob path, optionally ending with '/'."""
    if prefix:
        problem = blob_path_problem(prefix.removesuffix("/"))
        if problem:
            raise ValueError(f"prefix {problem}")
    return prefix


BlobPrefix = Annotated[str, AfterValidator(_check_prefix)]


class ListingParameters(BaseModel):
    """What every listing job shares: which blobs, and how many per chunk task."""

    model_config = ConfigDict(extra="forbid")

    container: ContainerName = Field(default="bronze", description="Container to list.")
    prefix: BlobPrefix = Field(default="", max_length=1024, description="Only blobs whose name starts with this.")
    suffix: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Only blobs whose name ends with this (case-insensitive), e.g. '.tif'.",
    )
    chunk_size: int = Field(default=1000, ge=1, le=10_000, description="Blobs per chunk task.")

    def wants(self, name: str) -> bool:
        return self.suffix is None or name.lower().endswith(self.suffix.lower())


def chunk_key(index: int) -> str:
    return f"{CHUNK_KEY_PREFIX}{index:05d}"


def too_many_chunks(chunk_size: int, max_chunks: int, blobs: str = "") -> PermanentTaskError:
    return PermanentTaskError(
        f"the listing{blobs} makes more than {max_chunks:,} chunks of chunk_size {chunk_size:,}; the limit is "
        f"{max_chunks:,} chunk tasks (MAX_TASKS_PER_STAGE): raise chunk_size or narrow the prefix"
    )


def chunk_keys(chunk_count: int, chunk_size: int, max_chunks: int) -> list[str]:
    """The chunk task keys of a listing of ``chunk_count`` chunks, within ``max_chunks``."""
    if chunk_count > min(max_chunks, MAX_CHUNKS):
        raise too_many_chunks(chunk_size, min(max_chunks, MAX_CHUNKS), f" ({chunk_count:,} chunks)")
    return [chunk_key(i) for i in range(chunk_count)]


def blob_record(info: BlobInfo) -> dict[str, Any]:
    """The JSON form of a listed blob stored in a chunk."""
    return {
        "name": info.name,
        "size": info.size,
        "etag": info.etag,
        "last_modified": info.last_modified.isoformat() if info.last_modified else None,
        "content_type": info.content_type,
    }


def iter_listing(storage: BlobStorage, params: ListingParameters) -> Iterator[BlobInfo]:
    """Every wanted blob, page by page (one page in memory at a time)."""
    token: str | None = None
    while True:
        page, token = storage.list_blob_page(
            params.container, prefix=params.prefix, limit=LIST_PAGE_SIZE, continuation=token
        )
        yield from (blob for blob in page if params.wants(blob.name))
        if token is None:
            return


@dataclass(frozen=True)
class ChunkStore:
    """The blob_chunks rows of one job."""

    db: Database
    job_id: str

    def list_into_chunks(
        self, storage: BlobStorage, params: ListingParameters, *, max_chunks: int = MAX_CHUNKS
    ) -> dict[str, Any]:
        """List the container into chunks; a rerun (retried task) replaces the earlier chunks.
        More than ``max_chunks`` chunks (MAX_TASKS_PER_STAGE) fail the task as soon as listed.

        Returns the counts; the chunk keys are ``chunk_key(0..chunk_count-1)``."""
        max_chunks = min(max_chunks, MAX_CHUNKS)
        with self.db.transaction() as repo:
            repo.delete_blob_chunks(self.job_id)
        keys: list[str] = []
        pending: list[dict[str, Any]] = []
        total_bytes = 0

        def flush() -> None:
            if len(keys) >= max_chunks:
                with self.db.transaction() as repo:  # nothing of a failed listing stays behind
                    repo.delete_blob_chunks(self.job_id)
                raise too_many_chunks(params.chunk_size, max_chunks, f" of {params.container}/{params.prefix}")
            key = chunk_key(len(keys))
            with self.db.transaction() as repo:
                repo.insert_blob_chunk(self.job_id, key, pending)
            keys.append(key)
            pending.clear()

        count = 0
        for blob in iter_listing(storage, params):
            pending.append(blob_record(blob))
            count += 1
            total_bytes += blob.size
            if len(pending) >= params.chunk_size:
                flush()
        if pending or not keys:  # an empty listing still gets one (empty) chunk task
            flush()
        return {"chunk_count": len(keys), "blobs": count, "bytes": total_bytes}

    def store_blobs(self, blobs: list[BlobInfo]) -> dict[str, Any]:
        """Store blobs already known (one named blob) as the job's only chunk."""
        records = [blob_record(blob) for blob in blobs]
        with self.db.transaction() as repo:
            repo.delete_blob_chunks(self.job_id)
            repo.insert_blob_chunk(self.job_id, chunk_key(0), records)
        return {"chunk_count": 1, "blobs": len(records), "bytes": sum(blob.size for blob in blobs)}

    def blobs(self, key: str) -> list[dict[str, Any]]:
        with self.db.statements() as repo:
            row = repo.get_blob_chunk(self.job_id, key)
        if row is None:
            raise PermanentTaskError(f"job {self.job_id} has no blob chunk {key}")
        blobs: list[dict[str, Any]] = row["blobs"]
        return blobs

    def save_results(self, key: str, results: list[dict[str, Any]]) -> None:
        with self.db.transaction() as repo:
            if repo.save_blob_chunk_results(self.job_id, key, results) != 1:
                raise PermanentTaskError(f"job {self.job_id} has no blob chunk {key}")

    def iter_results(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Every chunk's results in chunk order, one chunk in memory at a time."""
        with self.db.statements() as repo:
            keys = [row["chunk_key"] for row in repo.list_blob_chunk_keys(self.job_id)]
        for key in keys:
            with self.db.statements() as repo:
                row = repo.get_blob_chunk(self.job_id, key)
            if row is None or row["results"] is None:
                raise PermanentTaskError(f"blob chunk {key} of job {self.job_id} has no results")
            yield key, row["results"]
