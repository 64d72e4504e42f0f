"""process_rasters' last stage: what became of every listed file, and the one STAC collection.

``FileTally`` reads the job's records (controllers/process_rasters_plan.FileRecords) once, in chunk
order: every listed file ends converted (all its outputs written) or failed with a one-line reason
(not a raster, corrupt, a tile that failed, or its task failed). ``publish_collection`` streams one
Item per output COG into a self-contained collection (services/inventory/catalog.py's writer, items
built with services/stac/builder.py), so only names and counts stay in memory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controllers.process_rasters_plan import FileRecords, ProcessRastersParameters
from repositories.blob_storage import BlobStorage
from services.inventory.catalog import item_id_for, publish_in_place_catalog
from services.inventory.chunks import CHUNK_KEY_PREFIX
from services.raster.inspect import RasterMetadata
from services.raster.pipeline import CATALOG_FILES, MOSAIC_NAME, TILE_FILES, remove_stale_outputs
from services.raster.tiling import TileWindow
from services.raster.vrt import VRT_MEDIA_TYPE, MosaicTile, mosaic_vrt
from services.stac.builder import AssetFile, build_item

MAX_LISTED_FAILURES = 1000  # failed files named (with reasons) in the job result; the count is exact
TASK_FAILED = "not converted: its convert task failed (see the job's errors)"


@dataclass
class FileTally:
    total: int = 0
    converted: int = 0
    tiled: int = 0
    failed_count: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    _failed_names: set[str] = field(default_factory=set)

    def fail(self, name: str, reason: str) -> None:
        if name in self._failed_names:
            return
        self._failed_names.add(name)
        self.failed_count += 1
        if len(self.failed) < MAX_LISTED_FAILURES:
            self.failed.append({"name": name, "reason": reason})

    @property
    def failed_names(self) -> set[str]:
        """Every failed file (``failed`` names only the first MAX_LISTED_FAILURES)."""
        return set(self._failed_names)

    def converted_files(self, records: FileRecords) -> Iterator[list[dict[str, Any]]]:
        """The outputs of each converted file (a list: its tiles), counting every file on the way."""
        planned: dict[str, int] = {}  # convertible file → its number of tiles
        for _key, row in records.iter_rows(CHUNK_KEY_PREFIX):
            if row["results"] is None:  # its inspect task failed
                for blob in row["blobs"]:
                    self.total += 1
                    self.fail(blob["name"], "not inspected: its inspect task failed (see the job's errors)")
                continue
            for record in row["results"]:
                self.total += 1
                if "error" in record:
                    self.fail(record["name"], record["error"])
                else:
                    planned[record["name"]] = len(record["tiles"])
        done: set[str] = set()
        partial: dict[str, list[dict[str, Any]]] = {}
        for output in records.outputs():
            name = output["name"]
            if name in self._failed_names or name in done:
                continue
            if "error" in output:
                many = planned.get(name, 1) > 1
                self.fail(name, f"{output['tile']}: {output['error']}" if many else output["error"])
                partial.pop(name, None)
                continue
            tiles = partial.setdefault(name, [])
            tiles.append(output)
            if len(tiles) == planned.get(name, 1):
                del partial[name]
                done.add(name)
                self.converted += 1
                self.tiled += len(tiles) > 1
                yield sorted(tiles, key=lambda t: (t["window"]["row"], t["window"]["col"]))
        for name in planned:
            if name not in done:
                self.fail(name, TASK_FAILED)

    @classmethod
    def scan(cls, records: FileRecords) -> FileTally:
        tally = cls()
        for _outputs in tally.converted_files(records):
            pass
        return tally

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "converted": self.converted, "failed": self.failed_count, "tiled": self.tiled}

    def summary(self, examples: int = 3) -> str:
        shown = "; ".join(f"{f['name']}: {f['reason']}" for f in self.failed[:examples])
        more = "; …" if self.failed_count > examples else ""
        return (
            f"{self.failed_count} of {self.total} files failed: {shown}{more} "
            "(every failed file with its reason: the job result's failed_files)"
        )


ITEM_TO_ROOT = "../../.."  # from stac/{collection}/{item}/ to the container's root


def publish_collection(
    storage: BlobStorage, params: ProcessRastersParameters, tally: FileTally, records: FileRecords
) -> dict[str, Any] | None:
    """One Item per output COG (a tiled file: one per tile, and a mosaic VRT beside its tiles) in one
    self-contained collection. Then what an earlier run wrote and this one did not is removed: item
    files of the collection, and in each converted file's tile folder the tiles (and mosaic) of an
    earlier tiling. Both folders belong to this collection's owner alone (output paths are injective
    in source, options and collection); only direct children named as this job names its files go.
    None (nothing written) when no file was converted."""
    collection_id = params.resolved_collection_id
    written = {"cogs": 0, "cog_bytes": 0}
    keep: set[str] = set()
    folders: set[str] = set()  # each converted file's tile folder
    mosaics: list[dict[str, str]] = []

    def items() -> Iterator[dict[str, Any]]:
        for outputs in tally.converted_files(records):
            name = outputs[0]["name"]
            base_id = item_id_for(name)
            for output in outputs:
                item_id = base_id if len(outputs) == 1 else f"{base_id}-{output['tile']}"
                cog = output["cog"]
                asset = AssetFile(
                    href=f"{ITEM_TO_ROOT}/{cog['blob']}",
                    size=int(cog["bytes"]),
                    sha256=str(cog["sha256"]),
                    title=name if len(outputs) == 1 else f"{name} {output['tile']}",
                )
                metadata = RasterMetadata.from_dict(output["metadata"])
                item = build_item(
                    item_id, metadata, asset, item_datetime=datetime.fromisoformat(output["item_datetime"])
                )
                written["cogs"] += 1
                written["cog_bytes"] += int(cog["bytes"])
                keep.add(f"stac/{collection_id}/{item_id}/{item_id}.json")
                yield item.to_dict(include_self_link=False, transform_hrefs=False)
            keep.update(output["cog"]["blob"] for output in outputs)
            folders.add(posixpath.dirname(outputs[0]["cog"]["blob"]) + "/")
            if len(outputs) > 1:
                mosaics.append(write_mosaic(storage, params.output_container, outputs))
                keep.add(mosaics[-1]["blob"])

    published = publish_in_place_catalog(
        storage,
        items(),
        source=params.listing_label,
        output_container=params.output_container,
        collection_id=collection_id,
        description=f"Cloud-Optimized GeoTIFFs of the rasters under {params.listing_label}, made by geoetl.",
    )
    if published is None:
        return None
    keep.add(published["collection"]["blob"])
    catalog = [(f"stac/{collection_id}/", CATALOG_FILES)]
    removed = remove_stale_outputs(storage, params.output_container, catalog, keep)
    removed += remove_stale_tiles(storage, params.output_container, folders, keep)
    return {**published, **written, "mosaic_vrts": mosaics, "removed_stale": removed}


def remove_stale_tiles(storage: BlobStorage, container: str, folders: set[str], keep: set[str]) -> int:
    """Delete the tiles and mosaic of an earlier tiling in ``folders`` (this job's tile folders) that
    are not in ``keep``: one listing under the folders' common prefix, whatever their number; a blob
    outside the folders (another source's or other options' folder), deeper than their direct
    children, or not named as this job names its files, is never touched."""
    if not folders:
        return 0
    common = posixpath.commonprefix(sorted(folders))
    removed = 0
    for blob in storage.list_blobs(container, common[: common.rfind("/") + 1]):
        folder, _, name = blob.name.rpartition("/")
        if folder + "/" in folders and blob.name not in keep and TILE_FILES.match(name):
            removed += storage.delete(container, blob.name)
    return removed


def write_mosaic(storage: BlobStorage, container: str, tiles: list[dict[str, Any]]) -> dict[str, str]:
    folder = posixpath.dirname(tiles[0]["cog"]["blob"])
    document = mosaic_vrt(
        [
            MosaicTile(
                posixpath.basename(t["cog"]["blob"]),
                TileWindow.from_dict(t["window"]),
                RasterMetadata.from_dict(t["metadata"]),
            )
            for t in tiles
        ]
    )
    blob = f"{folder}/{MOSAIC_NAME}"
    storage.upload_bytes(container, blob, document.encode(), content_type=VRT_MEDIA_TYPE)
    return {"container": container, "blob": blob}
