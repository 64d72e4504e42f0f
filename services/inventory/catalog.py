"""STAC for rasters catalogued in place (catalog_container): one Item per readable raster, its
asset the source blob itself (no conversion), built with the same builder as process_raster; a
Collection whose extent is the union; written as a self-contained catalog to blob storage."""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac

from repositories.blob_storage import BlobStorage
from services.inventory.probe import KIND_RASTER
from services.raster.inspect import RasterMetadata
from services.stac.builder import AssetFile, build_collection, build_item, write_self_contained

GEOTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"


def item_id_for(name: str) -> str:
    """A readable, unique item id: the blob path slugged, plus a short hash of the exact name."""
    slug = re.sub(r"[^a-z0-9_.]+", "-", name.lower()).strip("-._")[:80] or "raster"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def item_for(storage: BlobStorage, container: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The Item (as a dict) of one probed blob, or None when it is not a catalogable raster."""
    raster = entry.get("raster") or {}
    if entry["kind"] != KIND_RASTER or "metadata" not in raster:
        return None
    metadata = RasterMetadata.from_dict(raster["metadata"])
    when = metadata.acquired_at or entry.get("last_modified") or datetime.now().astimezone().isoformat()
    asset = AssetFile(
        href=storage.client.get_blob_client(container, entry["name"]).url,
        media_type=pystac.MediaType.COG if raster.get("is_cog") else GEOTIFF_MEDIA_TYPE,
        size=int(entry["size"]),
        title=entry["name"],
    )
    item = build_item(item_id_for(entry["name"]), metadata, asset, item_datetime=datetime.fromisoformat(when))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def skip_reason(entry: dict[str, Any]) -> str:
    if entry["kind"] == KIND_RASTER:
        return str(entry["raster"].get("metadata_error", "no metadata"))
    return str(entry.get("error") or "not a raster")


def publish_in_place_catalog(
    storage: BlobStorage,
    items: Iterable[dict[str, Any]],
    *,
    source: str,
    output_container: str,
    collection_id: str,
) -> dict[str, Any]:
    """Write the collection and its items under {output_container}/stac/{collection_id}/."""
    stac_items = [pystac.Item.from_dict(item) for item in items]
    collection = build_collection(
        collection_id,
        stac_items,
        description=f"GeoTIFFs catalogued in place under {source}, made by geoetl.",
        title=collection_id,
    )
    storage.ensure_container(output_container)
    with tempfile.TemporaryDirectory(prefix="geoetl-catalog-") as work:
        root = Path(work)
        written = []
        for path in write_self_contained(collection, root / "stac" / collection_id):
            blob = path.relative_to(root).as_posix()
            storage.upload_bytes(output_container, blob, path.read_bytes(), content_type="application/json")
            written.append(blob)
    collection_blob = f"stac/{collection_id}/collection.json"
    return {
        "collection": {"container": output_container, "blob": collection_blob},
        "items": len(written) - 1,
        "bbox": collection.extent.spatial.bboxes[0],
    }
