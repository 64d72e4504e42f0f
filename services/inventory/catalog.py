"""STAC for rasters catalogued in place (catalog_container): one Item per readable raster, its
asset the source blob itself (no conversion), built with the same builder as process_raster; a
Collection whose extent is the union; written as a self-contained catalog to blob storage, item by
item, so a container of any size fits in a task's memory."""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pystac

from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError
from services.inventory.probe import KIND_RASTER
from services.raster.footprint import BBox, union_bbox
from services.raster.inspect import RasterMetadata
from services.stac.builder import AssetFile, build_item

GEOTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"
JSON = "application/json"


def item_id_for(name: str) -> str:
    """A readable, unique item id: the blob path slugged (at most 80 characters), plus the full
    SHA-256 of the exact name. The digest, not the slug, makes it unique: two names that slug
    alike never share an id (a short hash could be made to collide, and one item would be lost)."""
    slug = re.sub(r"[^a-z0-9_.]+", "-", name.lower()).strip("-._")[:80] or "raster"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()}"


class DuplicateItemIdError(PermanentTaskError):
    """Two rasters got the same STAC item id: one item would silently replace the other."""


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


UPLOADS_IN_FLIGHT = 32  # item files being written at once (each a few KB)


def _link_to(rel: str, href: str, media_type: str, title: str | None = None) -> pystac.Link:
    return pystac.Link(rel, href, media_type=media_type, title=title)


def publish_in_place_catalog(
    storage: BlobStorage,
    items: Iterable[dict[str, Any]],
    *,
    source: str,
    output_container: str,
    collection_id: str,
    description: str | None = None,
) -> dict[str, Any] | None:
    """Write the items, then their collection, as a self-contained catalog under
    {output_container}/stac/{collection_id}/ (the layout pystac's SELF_CONTAINED save gives:
    ``./<item id>/<item id>.json``, links relative). Streams: each item is written as it comes, so
    only its id, bbox and datetime stay in memory, whatever the number of rasters.
    Returns None, writing nothing, when ``items`` is empty."""
    storage.ensure_container(output_container)
    prefix = f"stac/{collection_id}"
    collection_link = "../collection.json"
    bboxes: list[BBox] = []
    first: datetime | None = None  # the temporal extent: only its ends are kept
    last: datetime | None = None
    item_hrefs: list[str] = []
    seen: dict[str, str] = {}  # item id → the asset it was written for (ids only: a few hundred bytes each)
    with ThreadPoolExecutor(8, thread_name_prefix="stac-items") as pool:
        in_flight: deque[Future[Any]] = deque()
        for data in items:
            item = pystac.Item.from_dict(data)
            asset = next(iter(item.assets.values())).href if item.assets else ""
            if item.id in seen:  # before its upload: never overwrite the first item
                raise DuplicateItemIdError(
                    f"STAC item id {item.id!r} of {asset} was already used for {seen[item.id]}; not overwriting it"
                )
            seen[item.id] = asset
            item.collection_id = collection_id
            item.clear_links()
            for rel in (pystac.RelType.ROOT, pystac.RelType.COLLECTION, pystac.RelType.PARENT):
                item.add_link(_link_to(rel, collection_link, pystac.MediaType.JSON, collection_id))
            body = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)).encode()
            blob = f"{prefix}/{item.id}/{item.id}.json"
            in_flight.append(pool.submit(storage.upload_bytes, output_container, blob, body, content_type=JSON))
            if len(in_flight) >= UPLOADS_IN_FLIGHT:
                in_flight.popleft().result()
            if item.bbox:
                bboxes.append(tuple(item.bbox))  # type: ignore[arg-type]
            if item.datetime is not None:
                first = item.datetime if first is None else min(first, item.datetime)
                last = item.datetime if last is None else max(last, item.datetime)
            item_hrefs.append(f"./{item.id}/{item.id}.json")
        for upload in in_flight:
            upload.result()
    if not item_hrefs:
        return None
    bbox = union_bbox(bboxes)
    collection = pystac.Collection(
        id=collection_id,
        description=description or f"GeoTIFFs catalogued in place under {source}, made by geoetl.",
        title=collection_id,
        license="other",
        extent=pystac.Extent(pystac.SpatialExtent([list(bbox)]), pystac.TemporalExtent([[first, last]])),
    )
    collection.clear_links()
    collection.add_link(_link_to(pystac.RelType.ROOT, "./collection.json", pystac.MediaType.JSON, collection_id))
    collection.add_links([_link_to(pystac.RelType.ITEM, href, pystac.MediaType.GEOJSON) for href in item_hrefs])
    collection_blob = f"{prefix}/collection.json"
    body = json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False)).encode()
    storage.upload_bytes(output_container, collection_blob, body, content_type=JSON)
    return {
        "collection": {"container": output_container, "blob": collection_blob},
        "items": len(item_hrefs),
        "bbox": list(bbox),
    }
