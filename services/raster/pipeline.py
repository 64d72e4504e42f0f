"""The I/O steps of the process_raster job: validate a source in place, convert one tile, publish the
catalog. Each composes the pure functions of services/raster and services/stac with blob storage;
controllers/process_raster.py wires them into stages.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
import rasterio
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from repositories.blob_storage import BlobStorage
from schemas.errors import InstanceBusyError, PermanentTaskError
from services.raster.cog import (
    COG_MEDIA_TYPE,
    LOSSY_COMPRESSIONS,
    CogOptions,
    cog_problems,
    compression_problem,
    gdal_config,
)
from services.raster.convert import (
    check_source_unchanged,
    convert_window,
    copies_whole_source,
    copy_source,
    window_source,
)
from services.raster.gdal_errors import gdal_error
from services.raster.inspect import RasterMetadata, UnsupportedRasterError, inspect_dataset, tiff_truncation_problem
from services.raster.memory import release_free_memory, track_peak_rss
from services.raster.tiling import TileWindow
from services.raster.vrt import VRT_MEDIA_TYPE, MosaicTile, mosaic_vrt
from services.raster.warp import DEFAULT_WARP_OPTIONS, WarpOptions, inspect_source
from services.stac.builder import AssetFile, build_collection, build_item, write_self_contained

MOSAIC_NAME = "mosaic.vrt"
# A cog task that finds every conversion slot of its process taken waits this long, then goes back
# to the queue (no attempt counted) to be picked up in HAND_BACK_SECONDS by whichever instance has
# room: a batch of tiles delivered to one busy instance spreads out instead of queueing behind it.
DEFAULT_SLOT_WAIT_SECONDS = 5.0
HAND_BACK_SECONDS = (5.0, 15.0)  # uniform jitter, so handed-back tiles do not return in lockstep


class StepTimer:
    """Wall time of named steps: ``with steps("upload"): ...``; ``seconds`` maps each to its duration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


@dataclass(frozen=True)
class BlobRef:
    container: str
    blob: str

    def to_dict(self) -> dict[str, str]:
        return {"container": self.container, "blob": self.blob}


OUTPUTS_ROOT = "cogs"
MAX_OUTPUT_PREFIX_CHARS = 900  # Azure allows 1024 characters per blob name; leave room for the tile names
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def escape_blob_path(name: str) -> str:
    """``name`` with every character outside ``A-Z a-z 0-9 - _ .`` (and a '.' that ends a path
    segment) written as ``~`` and two hex digits per UTF-8 byte; '/' stays. Injective ('~' is always
    escaped itself), and the result needs no percent-encoding in a URL or a relative STAC href."""
    out: list[str] = []
    for i, char in enumerate(name):
        ends_segment = i + 1 == len(name) or name[i + 1] == "/"
        if char == "/" or (char in _PLAIN and not (char == "." and ends_segment)):
            out.append(char)
        else:
            out.extend(f"~{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def output_prefix(source_blob: str, output_key: str | None = None) -> str:
    """Where a source's tiles (and mosaic) go: ``cogs/{escaped source path, extension kept}``, plus
    ``@{output_key}`` (the hash of non-default output options and an explicit collection id). An
    escaped path has no '@', so the map (source, key) → prefix is injective; a prefix that would be
    too long keeps the start of the path and ends in ``@`` + 16 hex digits of both (a longer hash
    than a key's, so the two forms never meet)."""
    escaped = escape_blob_path(source_blob)
    prefix = f"{OUTPUTS_ROOT}/{escaped}" + (f"@{output_key}" if output_key else "")
    if len(prefix) <= MAX_OUTPUT_PREFIX_CHARS:
        return prefix
    digest = hashlib.sha256(f"{source_blob}\0{output_key or ''}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{OUTPUTS_ROOT}/{escaped[: MAX_OUTPUT_PREFIX_CHARS - 40]}@{digest[:16]}"


def tile_blob(source_blob: str, tile_key: str, output_key: str | None = None) -> str:
    return f"{output_prefix(source_blob, output_key)}/{tile_key}.tif"


@contextmanager
def open_raster(path: str) -> Iterator[DatasetReader]:
    """Open a GeoTIFF (only the GTiff driver: no VRT or other formats that could reach other files),
    translating GDAL errors: network trouble is transient, anything else means a bad file."""
    try:
        with rasterio.open(path, driver="GTiff") as dataset:
            yield dataset
    except RasterioError as exc:
        raise gdal_error(exc, path) from exc


def check_decodes(dataset: DatasetReader) -> None:
    """Decode the first and last block: catches corrupt compressed data without reading everything."""
    rows, cols = dataset.block_shapes[0]
    last_row, last_col = (dataset.height - 1) // rows * rows, (dataset.width - 1) // cols * cols
    first = Window(0, 0, min(cols, dataset.width), min(rows, dataset.height))
    last = Window(last_col, last_row, dataset.width - last_col, dataset.height - last_row)
    for window in (first, last):
        dataset.read(window=window)


def validate_source(
    storage: BlobStorage,
    source: BlobRef,
    *,
    assume_crs: str | None,
    options: CogOptions,
    warp: WarpOptions = DEFAULT_WARP_OPTIONS,
) -> dict[str, Any]:
    """Check the source in place (headers and two blocks, by range reads) and record its metadata
    (that of its warp onto a north-up target grid when it needs one: services/raster/warp.py)."""
    info = storage.properties(source.container, source.blob)
    if info.size == 0:
        raise UnsupportedRasterError(f"blob {source.container}/{source.blob} is empty (0 bytes)")
    path = storage.vsiaz_path(source.container, source.blob)
    with storage.gdal_env(), open_raster(path) as dataset:
        metadata = inspect_source(dataset, assume_crs=assume_crs, options=warp)
        truncated = tiff_truncation_problem(dataset, info.size)
        if truncated:
            raise UnsupportedRasterError(truncated)
        try:
            check_decodes(dataset)
        except RasterioError as exc:
            raise gdal_error(exc, path) from exc
    problem = compression_problem(options.compression, metadata)
    if problem:
        raise UnsupportedRasterError(problem)
    return {
        "source": {**source.to_dict(), "bytes": info.size, "etag": info.etag},
        "metadata": metadata.to_dict(),
    }


def convert_tile(
    storage: BlobStorage,
    source: BlobRef,
    metadata: RasterMetadata,
    window: TileWindow,
    output: BlobRef,
    options: CogOptions,
    *,
    conversion_slots: threading.Semaphore,
    slot_wait_seconds: float = DEFAULT_SLOT_WAIT_SECONDS,
    read_directly: bool = False,
    copy_whole_source: bool = False,
) -> dict[str, Any]:
    """Stage the window locally (``copy_whole_source``: copy the blob when the window is all of it;
    ``read_directly``: let the COG driver read it from the source where it can), convert it to a COG
    while uploading it, validate, commit; record what was written (services/raster/convert.py)."""
    steps = StepTimer()
    path = storage.vsiaz_path(source.container, source.blob)
    lossy_with_nodata = options.compression in LOSSY_COMPRESSIONS and metadata.nodata is not None
    with track_peak_rss() as rss, tempfile.TemporaryDirectory(prefix="geoetl-cog-") as work:
        cog = Path(work) / "cog.tif"
        # The memory-heavy part runs at most N at a time per process. A task that cannot get a slot
        # in time goes back to the queue (possibly to another instance) rather than run into the
        # function timeout while it waits.
        with steps("waited_for_slot"):
            if not conversion_slots.acquire(timeout=slot_wait_seconds):
                raise InstanceBusyError(
                    f"every conversion slot of this instance stayed busy for {slot_wait_seconds:.0f}s",
                    retry_after=random.uniform(*HAND_BACK_SECONDS),
                )
        try:
            # The window is staged locally (one read of the source), or a whole source copied as it is
            # stored (copy_whole_source); with read_directly the COG driver reads it from the source
            # through a VRT instead where it can: services/raster/convert.py.
            local_copy: Path | None = None
            with steps("stage"), storage.gdal_env(**gdal_config(options)):
                # Read before the GTiff-only open, for check_source_unchanged (a direct read reopens by name).
                info = storage.properties(source.container, source.blob) if read_directly or copy_whole_source else None
                etag = info.etag if info is not None and read_directly else ""
                if info is not None and not read_directly and copies_whole_source(metadata, window, info.size):
                    with steps("copy_source"):
                        local_copy = copy_source(
                            storage,
                            source.container,
                            source.blob,
                            Path(work) / "source.tif",
                            size=info.size,
                            etag=info.etag,
                        )
                with open_raster(str(local_copy) if local_copy else path) as dataset:
                    convert_from, staged_because = window_source(
                        dataset,
                        path,
                        metadata,
                        window,
                        Path(work),
                        nodata_as_mask=lossy_with_nodata,
                        read_directly=read_directly,
                        local_copy=local_copy,
                    )
                if local_copy is not None and convert_from != local_copy:
                    local_copy.unlink()  # staged from the copy: free the disk now
                    local_copy = None
            # GDAL writes the COG front to back, so its blocks are uploaded while it writes; the blob
            # appears (or is replaced) only at commit(), after validation. Leaving early commits nothing.
            with storage.upload_while_written(
                output.container, output.blob, cog, content_type=COG_MEDIA_TYPE
            ) as upload:
                with steps("convert"):
                    direct = staged_because is None and local_copy is None
                    convert_window(
                        storage,
                        convert_from,
                        cog,
                        options,
                        dtype=metadata.dtype,
                        path=path,
                        direct=direct,
                        local_copy=local_copy is not None,
                    )
                convert_from.unlink()
                with steps("validate"):
                    problems = cog_problems(cog)
                    if problems:
                        raise PermanentTaskError(f"the written COG failed validation: {'; '.join(problems)}")
                    with rasterio.open(cog) as written:
                        tile_metadata = inspect_dataset(written)
                with steps("upload_after_write"):
                    if direct:  # GDAL opened the source again by name
                        check_source_unchanged(storage, source.container, source.blob, etag)
                    uploaded = upload.commit()
        finally:
            release_free_memory()  # the conversion's heap and the upload's blocks
            conversion_slots.release()
        upload_blocks = {
            "while_writing": upload.staged_while_writing,
            "after_write": upload.staged_at_commit,
            "changed_after_staging": upload.restaged,
        }
    return {
        "cog": uploaded.as_output(),
        "window": window.to_dict(),
        "metadata": tile_metadata.to_dict(),
        "peak_rss_bytes": rss.peak_bytes,
        "process_id": os.getpid(),
        "seconds": steps.seconds,
        "upload_blocks": upload_blocks,
        "staged_because": staged_because,  # None: converted from the blob's copy or (read_directly) the blob
        "source_read": "local copy" if local_copy is not None else "vrt" if staged_because is None else "staged",
    }


@dataclass(frozen=True)
class CatalogTile:
    """One converted tile, as the stac stage receives it from the cog stage."""

    key: str
    cog: BlobRef
    size: int
    sha256: str
    window: TileWindow
    metadata: RasterMetadata
    item_datetime: datetime

    @classmethod
    def from_result(cls, key: str, result: dict[str, Any]) -> CatalogTile:
        cog = result["cog"]
        return cls(
            key=key,
            cog=BlobRef(cog["container"], cog["blob"]),
            size=int(cog["bytes"]),
            sha256=str(cog["sha256"]),
            window=TileWindow.from_dict(result["window"]),
            metadata=RasterMetadata.from_dict(result["metadata"]),
            item_datetime=datetime.fromisoformat(result["item_datetime"]),
        )


def publish_catalog(
    storage: BlobStorage,
    source: BlobRef,
    tiles: Sequence[CatalogTile],
    *,
    output_container: str,
    collection_id: str,
    output_key: str | None = None,
) -> dict[str, Any]:
    """Write the mosaic VRT (more than one tile) and the self-contained STAC catalog; remove stale
    files. The tiles' folder and the catalog's belong to this collection's owner alone (output
    paths are injective in source, options and collection), so what an earlier run of the owner
    left there and this run did not write is this owner's own stale output."""
    tiles = sorted(tiles, key=lambda t: (t.window.row, t.window.col))
    prefix = output_prefix(source.blob, output_key)
    mosaic: BlobRef | None = None
    if len(tiles) > 1:
        mosaic = BlobRef(output_container, f"{prefix}/{MOSAIC_NAME}")
        document = mosaic_vrt([MosaicTile(f"{t.key}.tif", t.window, t.metadata) for t in tiles])
        storage.upload_bytes(mosaic.container, mosaic.blob, document.encode(), content_type=VRT_MEDIA_TYPE)
    with tempfile.TemporaryDirectory(prefix="geoetl-stac-") as work:
        # A local mirror of the output container, so pystac computes relative hrefs between blobs.
        root = Path(work)
        items = [
            build_item(
                f"{collection_id}-{tile.key}",
                tile.metadata,
                AssetFile(href=str(root / tile.cog.blob), size=tile.size, sha256=tile.sha256, title=tile.key),
                item_datetime=tile.item_datetime,
            )
            for tile in tiles
        ]
        assets = {}
        if mosaic is not None:
            catalog_dir = root / "stac" / collection_id
            href = Path(*[".."] * len(catalog_dir.relative_to(root).parts)) / mosaic.blob
            assets["mosaic"] = pystac.Asset(
                href=str(href), media_type=VRT_MEDIA_TYPE, title="GDAL VRT mosaic of the tiles", roles=["data"]
            )
        collection = build_collection(
            collection_id,
            items,
            description=f"Cloud-Optimized GeoTIFF tiles of {source.container}/{source.blob}, made by geoetl.",
            title=collection_id,
            assets=assets,
        )
        written = [
            BlobRef(output_container, path.relative_to(root).as_posix())
            for path in write_self_contained(collection, root / "stac" / collection_id)
        ]
        for ref in written:
            data = (root / ref.blob).read_bytes()
            storage.upload_bytes(ref.container, ref.blob, data, content_type="application/json")
    current = {ref.blob for ref in written} | {t.cog.blob for t in tiles} | ({mosaic.blob} if mosaic else set())
    owned = [(f"stac/{collection_id}/", CATALOG_FILES), (f"{prefix}/", TILE_FILES)]
    removed = remove_stale_outputs(storage, output_container, owned, current)
    collection_ref = next(ref for ref in written if ref.blob.endswith("/collection.json"))
    return {
        "collection": collection_ref.to_dict(),
        "items": [ref.to_dict() for ref in written if ref != collection_ref],
        "mosaic_vrt": mosaic.to_dict() if mosaic else None,
        "removed_stale": removed,
    }


# What this job writes under each output prefix (direct children only: "cogs/a/" must not reach
# into "cogs/a/b/", the tiles of another source).
TILE_FILES = re.compile(r"^(tile_r\d+_c\d+\.tif|mosaic\.vrt)$")
CATALOG_FILES = re.compile(r"^(collection\.json|[^/]+/[^/]+\.json)$")


def remove_stale_outputs(
    storage: BlobStorage, container: str, owned: Sequence[tuple[str, re.Pattern[str]]], keep: set[str]
) -> int:
    """Delete files an earlier run (another tiling) wrote under ``owned`` prefixes and this run did not."""
    removed = 0
    for prefix, names in owned:
        for blob in list(storage.list_blobs(container, prefix)):
            if blob.name not in keep and names.match(blob.name[len(prefix) :]):
                removed += storage.delete(container, blob.name)
    return removed
