"""The STAC Item of a GeoParquet export (pystac): table extension (``table:columns``,
``table:row_count``, ``table:primary_geometry``), projection extension (code or PROJJSON, native
bbox), the bbox and footprint in WGS84, and one asset per file (file extension: size, checksum)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pystac
from pyproj import CRS, Transformer
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.table import Column, TableExtension

from services.vector.geoparquet import MEDIA_TYPE

SHA256_MULTIHASH_PREFIX = "1220"


@dataclass(frozen=True)
class ParquetAsset:
    key: str
    href: str  # relative to the item
    size: int
    sha256: str


def item_id_for(blob_name: str) -> str:
    stem = blob_name[: -len(".parquet")] if blob_name.endswith(".parquet") else blob_name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-") or "geoparquet"


def arrow_columns(schema: pa.Schema, geometry: str) -> list[dict[str, str]]:
    """``table:columns``: every column with its Arrow type (the geometry column as WKB geometry)."""
    columns = []
    for f in schema:
        kind = "geometry (WKB)" if f.name == geometry else str(f.type)
        columns.append({"name": f.name, "type": kind})
    return columns


def wgs84_bbox(extent: list[float], crs: CRS | None) -> list[float] | None:
    if crs is None:
        return None
    if crs.equals(CRS.from_epsg(4326)) or crs.equals(CRS("OGC:CRS84")):
        return list(extent)
    transformer = Transformer.from_crs(crs, CRS("OGC:CRS84"), always_xy=True)
    west, south, east, north = transformer.transform_bounds(extent[0], extent[1], extent[2], extent[3], densify_pts=21)
    return [west, south, east, north]


def build_item(
    item_id: str,
    *,
    assets: list[ParquetAsset],
    columns: list[dict[str, str]],
    row_count: int,
    geometry_column: str,
    extent: list[float] | None,
    crs: CRS | None,
    when: datetime,
    description: str,
) -> pystac.Item:
    bbox = wgs84_bbox(extent, crs) if extent else None
    footprint: dict[str, Any] | None = None
    if bbox is not None:
        w, s, e, n = bbox
        footprint = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    item = pystac.Item(
        id=item_id, geometry=footprint, bbox=bbox, datetime=when, properties={"description": description}
    )
    table = TableExtension.ext(item, add_if_missing=True)
    table.columns = [Column(dict(c)) for c in columns]
    table.row_count = row_count
    table.primary_geometry = geometry_column
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg(min_confidence=100) if crs is not None else None
    projection.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        projjson=None if epsg or crs is None else crs.to_json_dict(),
        bbox=list(extent) if extent else None,
    )
    for asset in assets:
        stac_asset = pystac.Asset(href=asset.href, media_type=MEDIA_TYPE, roles=["data"], title=asset.key)
        item.add_asset(asset.key, stac_asset)
        FileExtension.ext(stac_asset, add_if_missing=True).apply(
            size=asset.size, checksum=SHA256_MULTIHASH_PREFIX + asset.sha256
        )
    return item
