"""STAC Items and Collections (pystac) from raster metadata records.

``build_item`` needs only a ``RasterMetadata`` record and the asset's href (plus its size and
checksum when known), so any job that can inspect a raster (process_raster, a future "catalog
existing rasters") builds the same items. ``write_self_contained`` lays a collection out as a
self-contained catalog (relative links and asset hrefs, no self links) under a directory, ready to
be copied to blob storage path for path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pystac
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from services.raster.footprint import union_bbox
from services.raster.inspect import RasterMetadata

# The one rule for STAC collection ids, for every job type. An id is a path segment of blob names
# (``stac/{id}/collection.json``, ``stac/{id}/{id}-tile_r0_c0/…``) and of STAC API URLs
# (``/collections/{id}``), so it uses only RFC 3986 unreserved characters that need no
# percent-encoding anywhere (a-z 0-9 . _ -; "~" left out), is lowercase (ids differing only in case
# would share a path on case-insensitive tools), starts with a letter or digit (no hidden files, no
# option-like "-x"), has no ".." (a path-traversal segment for URL normalisers) and no trailing "."
# (dropped by Windows paths and some URL layers). 128 characters keep item ids and blob paths short.
MAX_COLLECTION_ID_LENGTH = 128
COLLECTION_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*$"  # no lookaround: JSON Schema/ECMA too
COLLECTION_ID_RULE = (
    f"1-{MAX_COLLECTION_ID_LENGTH} characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, "
    "with no '..' and not ending in '.'"
)
_COLLECTION_ID = re.compile(COLLECTION_ID_PATTERN)


def collection_id_problem(value: str) -> str | None:
    """Why ``value`` breaks the collection id rule (the message states the rule), or None."""
    if len(value) <= MAX_COLLECTION_ID_LENGTH and _COLLECTION_ID.fullmatch(value):
        return None
    return f"must be {COLLECTION_ID_RULE}, e.g. 'terrain-dem.v2'"


def check_collection_id(value: str) -> str:
    problem = collection_id_problem(value)
    if problem:
        raise ValueError(f"collection id {value[:140]!r} {problem}")
    return value


DATA_ASSET_KEY = "data"
SHA256_MULTIHASH_PREFIX = "1220"  # multihash: sha2-256 (0x12), 32 bytes (0x20)


@dataclass(frozen=True)
class AssetFile:
    """Where an item's data file is and what is known about its bytes."""

    href: str
    media_type: str = pystac.MediaType.COG
    size: int | None = None
    sha256: str | None = None
    title: str | None = None
    roles: tuple[str, ...] = field(default=("data",))


def file_checksum(sha256_hex: str) -> str:
    """The file extension's checksum: a hex multihash."""
    return SHA256_MULTIHASH_PREFIX + sha256_hex


def raster_bands(metadata: RasterMetadata) -> list[RasterBand]:
    resolution = metadata.resolution
    bands = []
    for band in metadata.bands:
        raster_band = RasterBand.create(
            nodata=metadata.nodata,  # type: ignore[arg-type]  # "nan"/"inf"/"-inf" strings are valid
            data_type=DataType(metadata.dtype),
            spatial_resolution=resolution[0] if math.isclose(resolution[0], resolution[1]) else None,
            unit=band.unit,
            scale=band.scale if band.scale != 1.0 else None,
            offset=band.offset if band.offset != 0.0 else None,
        )
        bands.append(raster_band)
    return bands


def build_item(
    item_id: str,
    metadata: RasterMetadata,
    asset: AssetFile,
    *,
    item_datetime: datetime,
    asset_key: str = DATA_ASSET_KEY,
) -> pystac.Item:
    """One Item for one raster file, with the projection, raster and file extensions."""
    item = pystac.Item(
        id=item_id,
        geometry=metadata.footprint_wgs84,
        bbox=list(metadata.bbox_wgs84),
        datetime=item_datetime,
        properties={},
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.apply(
        code=metadata.crs_code,
        wkt2=None if metadata.crs_code else metadata.crs_wkt,
        bbox=list(metadata.bounds),
        shape=[metadata.height, metadata.width],
        transform=list(metadata.transform),
    )
    stac_asset = pystac.Asset(href=asset.href, media_type=asset.media_type, title=asset.title, roles=list(asset.roles))
    item.add_asset(asset_key, stac_asset)
    RasterExtension.ext(stac_asset, add_if_missing=True).apply(bands=raster_bands(metadata))
    if asset.size is not None or asset.sha256 is not None:
        FileExtension.ext(stac_asset, add_if_missing=True).apply(
            size=asset.size, checksum=file_checksum(asset.sha256) if asset.sha256 else None
        )
    return item


def build_collection(
    collection_id: str,
    items: Sequence[pystac.Item],
    *,
    description: str,
    title: str | None = None,
    license: str = "other",
    assets: dict[str, pystac.Asset] | None = None,
) -> pystac.Collection:
    """A Collection holding ``items``, its extent their union (antimeridian-aware)."""
    if not items:
        raise ValueError("a collection needs at least one item")
    check_collection_id(collection_id)
    bbox = union_bbox([tuple(item.bbox) for item in items if item.bbox])  # type: ignore[misc]
    times = [item.datetime for item in items if item.datetime is not None]
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        title=title,
        license=license,
        extent=pystac.Extent(
            pystac.SpatialExtent([list(bbox)]),
            pystac.TemporalExtent([[min(times), max(times)]]),
        ),
    )
    for key, asset in (assets or {}).items():
        collection.add_asset(key, asset)
    collection.add_items(items)
    return collection


def write_self_contained(collection: pystac.Collection, directory: Path) -> list[Path]:
    """Save ``collection`` and its items under ``directory`` with relative links; returns the files.

    Absolute asset hrefs that point inside the same tree (set them as local paths in the same
    namespace) are made relative too, so the catalog can be moved as a whole.
    """
    # The trailing separator marks a directory: pystac takes a root href with a dot in its last part
    # (a collection id such as "alpha.v2") for a file and would write the catalog one level up.
    collection.normalize_hrefs(f"{directory}/")
    collection.make_all_asset_hrefs_relative()
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return sorted(directory.rglob("*.json"))
