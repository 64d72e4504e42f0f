"""process_rasters' parameters, its batching plan and where its per-file records live.

Per-file records never travel in queue messages or task results (a prefix may hold 100 000
rasters): they are rows of ``blob_chunks`` (services/inventory/chunks.py). The listing's
``chunk_NNNNN`` rows hold the listed blobs and, once inspected, each file's validation record
(metadata and tiles, or the reason it cannot be converted); each convert task writes one
``out_<task key>`` row with the record of every output it wrote or failed to write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from controllers.process_raster_parameters import (
    OUTPUT_NEUTRAL_FIELDS,
    CollectionId,
    RasterOutputOptions,
    collection_id_for,
    options_key,
)
from repositories.database import Database
from schemas.blob_names import ContainerName
from services.inventory.chunks import CHUNK_KEY_PREFIX, ListingParameters
from services.raster.tiling import TaskMemoryModel

RASTER_SUFFIXES = (".tif", ".tiff")
OUTPUT_ROW_PREFIX = "out_"
DEFAULT_MAX_FILES_PER_TASK = 32
MIN_BATCHES = 4  # a few small files still spread over several instances


class ProcessRastersParameters(ListingParameters, RasterOutputOptions):
    """Which blobs (container, prefix, suffix), how to convert them (process_raster's options) and
    where the one collection goes."""

    suffix: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Only blobs whose name ends with this (case-insensitive). Default: .tif and .tiff.",
    )
    chunk_size: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Blobs per listing chunk: one inspect task validates them, 8 at a time.",
    )
    max_files_per_task: int = Field(
        default=DEFAULT_MAX_FILES_PER_TASK,
        ge=1,
        le=1000,
        description="Most small files one convert task converts (files are also grouped by pixel bytes within "
        "the per-task memory budget; a file too big for one task is cut into tiles, one task each).",
    )
    output_container: ContainerName = Field(default="silver", description="Container for COGs and STAC.")
    collection_id: CollectionId | None = Field(
        default=None,
        description="STAC collection id (the same rule as process_raster's). Default derived from container, "
        "prefix, suffix and the output options: a slug plus 12 hex digits of their SHA-256 "
        "(bronze + landsat/2020/ → bronze-landsat-2020-<hash>). A collection id belongs to one owner: naming "
        "another's is a 409.",
    )

    def wants(self, name: str) -> bool:
        lowered = name.lower()
        return lowered.endswith(self.suffix.lower()) if self.suffix else lowered.endswith(RASTER_SUFFIXES)

    @property
    def conversion_options(self) -> dict[str, Any]:
        """The output options that differ from their defaults (process_raster's rule: every option
        field but the STAC datetime), as JSON values."""
        fields = set(RasterOutputOptions.model_fields) - OUTPUT_NEUTRAL_FIELDS
        dumped = self.model_dump(mode="json", exclude_defaults=True, include=fields)
        if self.container != type(self).model_fields["container"].default:  # as process_raster: an output option
            dumped["container"] = self.container
        return dict(sorted(dumped.items()))

    @property
    def options_key(self) -> str | None:
        return options_key(self.conversion_options)

    @property
    def listing_label(self) -> str:
        return f"{self.container}/{self.prefix}" + (f" (suffix {self.suffix!r})" if self.suffix else "")

    @property
    def default_collection_id(self) -> str:
        name = f"{self.container}/{self.prefix}" + (f"\0{self.suffix}" if self.suffix else "")
        return collection_id_for(name, self.options_key)

    @property
    def resolved_collection_id(self) -> str:
        return self.collection_id or self.default_collection_id

    def output_key(self, blob_name: str) -> str | None:
        """What a file's output paths add to its source path (pipeline.output_prefix): process_raster's
        ``output_key`` of that file with these options into this collection, so each file goes where
        process_raster would put it (injective in source, options and collection)."""
        options = self.conversion_options
        collection_id = self.resolved_collection_id
        if collection_id != collection_id_for(blob_name, options_key(options)):
            options = {**options, "collection_id": collection_id}
        return options_key(options)


# --- the batching plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRef:
    """A file by its place in the listing: chunk key and position in it."""

    chunk: str
    index: int

    def to_list(self) -> list[Any]:
        return [self.chunk, self.index]

    @classmethod
    def from_list(cls, value: list[Any]) -> FileRef:
        return cls(str(value[0]), int(value[1]))


@dataclass(frozen=True)
class PlannedFile:
    ref: FileRef
    pixel_bytes: int
    tiles: int  # 1: converted whole (batched with others); more: one task per tile


@dataclass(frozen=True)
class ConvertTask:
    key: str
    files: tuple[FileRef, ...]
    tile: dict[str, int] | None = None  # the window, for a task converting one tile of a large file

    def parameters(self) -> dict[str, Any]:
        values: dict[str, Any] = {"files": [ref.to_list() for ref in self.files]}
        if self.tile is not None:
            values["window"] = self.tile
        return values


def batch_bytes_limit(memory: TaskMemoryModel) -> int:
    """The most pixel bytes one batch of whole files may hold: what a single tile task may stage
    (the budget less baseline, GDAL cache and upload buffers), so a batch is never more work than
    the largest tile. Files are converted one after another, so a batch's peak memory is that of
    its largest file, which alone fits the model (its plan is one tile)."""
    fixed = memory.worker_baseline_bytes + memory.gdal_cache_bytes + memory.upload_buffer_bytes
    return max(memory.budget_bytes - fixed, 1)


def plan_batches(
    files: Iterable[PlannedFile], *, max_bytes: int, max_files: int, min_batches: int = 1
) -> list[list[PlannedFile]]:
    """Group whole files, in listing order, into batches of at most ``max_files`` files and (unless a
    single file is bigger) ``max_bytes`` pixel bytes. The count cap is evened out over the batches
    it makes (40 files at 32 per task: two batches of 20, not 32 + 8), so no task has much more
    to do than another and the last one does not run alone; and there are at least ``min_batches``
    (12 files: 4 tasks of 3, not one task for a single instance while the others idle)."""
    files = list(files)
    if files:
        count = max(math.ceil(len(files) / max_files), min(len(files), min_batches))
        max_files = math.ceil(len(files) / count)
    batches: list[list[PlannedFile]] = []
    current: list[PlannedFile] = []
    held = 0
    for planned in files:
        if current and (len(current) >= max_files or held + planned.pixel_bytes > max_bytes):
            batches.append(current)
            current, held = [], 0
        current.append(planned)
        held += planned.pixel_bytes
    if current:
        batches.append(current)
    return batches


def batch_key(number: int) -> str:
    return f"batch_{number:05d}"


def tile_task_key(ref: FileRef, tile_key: str) -> str:
    chunk_number = int(ref.chunk.removeprefix(CHUNK_KEY_PREFIX))
    return f"file_{chunk_number:05d}_{ref.index:05d}_{tile_key}"


def inspection_plan(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the convert stage's fan-out needs of one inspected chunk (in the inspect task's result;
    positions in the chunk, never names): ``whole`` [[index, pixel bytes]] of files converted whole,
    ``tiled`` [[index, [window…]]] of files cut into tiles."""
    whole: list[list[int]] = []
    tiled: list[list[Any]] = []
    for index, record in enumerate(records):
        if "metadata" not in record:
            continue  # not convertible: its reason is in the record
        if len(record["tiles"]) == 1:
            whole.append([index, int(record["pixel_bytes"])])
        else:
            tiled.append([index, record["tiles"]])
    return {"whole": whole, "tiled": tiled}


def plan_convert_tasks(
    inspected: Iterable[tuple[str, dict[str, Any]]], *, max_bytes: int, max_files: int, min_batches: int = MIN_BATCHES
) -> list[ConvertTask]:
    """The convert stage from each chunk's ``inspection_plan``, in chunk order: batches of whole files
    and one task per tile of each large file."""
    whole: list[PlannedFile] = []
    tiled: list[ConvertTask] = []
    for chunk, plan in inspected:
        for index, size in plan["whole"]:
            whole.append(PlannedFile(FileRef(chunk, int(index)), int(size), 1))
        for index, tiles in plan["tiled"]:
            ref = FileRef(chunk, int(index))
            for tile in tiles:
                key = f"tile_r{tile['row']}_c{tile['col']}"
                tiled.append(ConvertTask(tile_task_key(ref, key), (ref,), tile))
    batches = plan_batches(whole, max_bytes=max_bytes, max_files=max_files, min_batches=min_batches)
    planned = [ConvertTask(batch_key(n), tuple(f.ref for f in batch)) for n, batch in enumerate(batches)]
    return planned + tiled


# --- records in blob_chunks -------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecords:
    """The blob_chunks rows of one process_rasters job: listing chunks and output rows."""

    db: Database
    job_id: str

    def keys(self, prefix: str) -> list[str]:
        with self.db.statements() as repo:
            rows = repo.list_blob_chunk_keys(self.job_id)
        return [row["chunk_key"] for row in rows if str(row["chunk_key"]).startswith(prefix)]

    def row(self, key: str) -> dict[str, Any] | None:
        with self.db.statements() as repo:
            row: dict[str, Any] | None = repo.get_blob_chunk(self.job_id, key)
        return row

    def iter_rows(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Rows whose key starts with ``prefix``, in key order, one in memory at a time."""
        for key in self.keys(prefix):
            row = self.row(key)
            if row is not None:
                yield key, row

    def inspected(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Each listing chunk's inspection records (None-results chunks are skipped: their task failed)."""
        for key, row in self.iter_rows(CHUNK_KEY_PREFIX):
            if row["results"] is not None:
                yield key, row["results"]

    def save_outputs(self, task_key: str, records: list[dict[str, Any]]) -> None:
        """One convert task's per-file records (a retried task replaces them)."""
        key = OUTPUT_ROW_PREFIX + task_key
        with self.db.transaction() as repo:
            repo.insert_blob_chunk(self.job_id, key, [{"task": task_key}])
            repo.save_blob_chunk_results(self.job_id, key, records)

    def save_inspection(self, chunk: str, records: list[dict[str, Any]]) -> None:
        """Replace a listing chunk's inspection records (a retry inspected some files again)."""
        with self.db.transaction() as repo:
            repo.save_blob_chunk_results(self.job_id, chunk, records)

    def drop_outputs(self, names: set[str]) -> None:
        """Forget every output record of the files ``names`` (a retry converts them again)."""
        for key, row in self.iter_rows(OUTPUT_ROW_PREFIX):
            kept = [output for output in row["results"] or [] if output["name"] not in names]
            if len(kept) != len(row["results"] or []):
                with self.db.transaction() as repo:
                    repo.save_blob_chunk_results(self.job_id, key, kept)

    def save_note(self, key: str, note: dict[str, Any]) -> None:
        """A row of its own (no listing chunk, no output row) holding one JSON object."""
        with self.db.transaction() as repo:
            repo.insert_blob_chunk(self.job_id, key, [])
            repo.save_blob_chunk_results(self.job_id, key, [note])

    def note(self, key: str) -> dict[str, Any] | None:
        row = self.row(key)
        if row is None or not row["results"]:
            return None
        note: dict[str, Any] = row["results"][0]
        return note

    def outputs(self) -> Iterator[dict[str, Any]]:
        for _key, row in self.iter_rows(OUTPUT_ROW_PREFIX):
            yield from row["results"] or []
