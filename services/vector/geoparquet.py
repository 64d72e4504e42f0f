"""GeoParquet writing: Hilbert ordering, the ``geo`` metadata, the bbox covering column, row groups.

Follows the GeoParquet distribution best practices: WKB geometry (ISO, as PostGIS ``ST_AsBinary``
and GDAL's Arrow stream produce it), a PROJJSON ``crs`` (pyproj), the observed ``geometry_types``
and ``bbox``, a ``bbox`` struct column (xmin, ymin, xmax, ymax: float64) declared as the geometry's
``covering`` (1.1.0), zstd, row groups of ``row_group_size`` rows, and rows ordered along a Hilbert
curve of their bbox centres over the data's extent.

Hilbert keys: the extent is cut into 2^16 x 2^16 cells; a row's key is the Hilbert index of the cell
holding its bbox centre (``hilbert_keys``). A cell at a coarser level k (``cell_of``) holds exactly
the keys whose top 2k bits are its own Hilbert index, so parts made of runs of coarse cells (in their
Hilbert order) and each sorted by fine key concatenate into one globally ordered file. Rows without
a geometry (NULL or empty) sort last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from services.vector.geometry import VectorInputError

HILBERT_LEVEL = 16
GEOPARQUET_VERSIONS = ("1.0.0", "1.1.0")
GeoParquetVersion = Literal["1.0.0", "1.1.0"]
Compression = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]
BBOX_COLUMN = "bbox"
MEDIA_TYPE = "application/vnd.apache.parquet"
_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
BBOX_TYPE = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])
Extent = tuple[float, float, float, float]


def hilbert_index(x: np.ndarray, y: np.ndarray, level: int) -> np.ndarray:
    """Hilbert index of integer cells (x, y) in [0, 2^level) on a 2^level x 2^level grid (uint64).

    The classic iterative xy→d conversion, one numpy pass per bit: (0,0) → 0, (0,1) → 1, (1,1) → 2,
    (1,0) → 3 on a 2 x 2 grid, each next index an edge-neighbour of the previous one."""
    n = np.uint64(1) << np.uint64(level)
    x = x.astype(np.uint64, copy=True)
    y = y.astype(np.uint64, copy=True)
    d = np.zeros(x.shape, dtype=np.uint64)
    s = n >> np.uint64(1)
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((np.uint64(3) * rx.astype(np.uint64)) ^ ry.astype(np.uint64))
        flip = ~ry & rx
        x = np.where(flip, n - np.uint64(1) - x, x)
        y = np.where(flip, n - np.uint64(1) - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= np.uint64(1)
    return d


def cell_of(values: np.ndarray, low: float, span: float, level: int) -> np.ndarray:
    """The cell index (0 … 2^level - 1) of coordinates along one axis of the extent."""
    cells = 1 << level
    scale = cells / span if span > 0 else 0.0
    with np.errstate(invalid="ignore"):
        index = np.floor((values - low) * scale)
    return np.clip(np.nan_to_num(index, nan=0.0), 0, cells - 1).astype(np.uint64)


def hilbert_keys(bounds: np.ndarray, extent: Extent, level: int = HILBERT_LEVEL) -> np.ndarray:
    """One key per row of ``bounds`` (N x 4: xmin, ymin, xmax, ymax) over ``extent``; NaN rows (no
    geometry) get the largest key, so they sort last."""
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    xmin, ymin, xmax, ymax = extent
    keys = hilbert_index(cell_of(cx, xmin, xmax - xmin, level), cell_of(cy, ymin, ymax - ymin, level), level)
    keys[np.isnan(cx) | np.isnan(cy)] = np.iinfo(np.uint64).max
    return keys


def hilbert_order(bounds: np.ndarray, extent: Extent) -> np.ndarray:
    """The row order (indices) along the Hilbert curve; ties keep their input order."""
    return np.argsort(hilbert_keys(bounds, extent), kind="stable")


@dataclass
class GeometrySummary:
    """What the ``geo`` metadata says about a geometry column: its bbox and its geometry types."""

    bbox: list[float] | None = None
    types: set[str] = field(default_factory=set)
    rows: int = 0

    def add(self, bounds: np.ndarray, type_ids: np.ndarray, has_z: np.ndarray) -> None:
        self.rows += len(type_ids)
        if len(bounds) and not np.all(np.isnan(bounds[:, 0])):
            box = [
                float(np.nanmin(bounds[:, 0])),
                float(np.nanmin(bounds[:, 1])),
                float(np.nanmax(bounds[:, 2])),
                float(np.nanmax(bounds[:, 3])),
            ]
            self.merge_bbox(box)
        for type_id, z in set(zip(type_ids.tolist(), has_z.tolist(), strict=True)):
            if type_id in _TYPE_NAMES:
                self.types.add(_TYPE_NAMES[type_id] + (" Z" if z else ""))

    def merge_bbox(self, box: list[float] | None) -> None:
        if box is None:
            return
        if self.bbox is None:
            self.bbox = list(box)
        else:
            self.bbox = [
                min(self.bbox[0], box[0]),
                min(self.bbox[1], box[1]),
                max(self.bbox[2], box[2]),
                max(self.bbox[3], box[3]),
            ]

    def merge(self, other: dict[str, Any]) -> None:
        self.merge_bbox(other.get("bbox"))
        self.types.update(other.get("geometry_types", []))
        self.rows += int(other.get("rows", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": self.bbox, "geometry_types": sorted(self.types), "rows": self.rows}


def describe_geometries(
    wkb: pa.Array | pa.ChunkedArray, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bounds N x 4, type ids, has_z) of WKB values; NULL and empty geometries have NaN bounds and
    type id -1. Parsed ``chunk`` values at a time: GEOS objects never exist for the whole column."""
    bounds, type_ids, has_z = [np.empty((0, 4))], [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=bool)]
    for start in range(0, len(wkb), chunk):
        geometries = shapely.from_wkb(wkb.slice(start, chunk).to_numpy(zero_copy_only=False))
        bounds.append(shapely.bounds(geometries).reshape(-1, 4))
        types = shapely.get_type_id(geometries).astype(np.int64)
        types[shapely.is_empty(geometries)] = -1  # empties say nothing about the column's types
        type_ids.append(types)
        has_z.append(shapely.has_z(geometries))
    return np.concatenate(bounds), np.concatenate(type_ids), np.concatenate(has_z)


def bbox_column(bounds: np.ndarray) -> pa.StructArray:
    """The covering column: one (xmin, ymin, xmax, ymax) struct per row, NULL without geometry."""
    missing = np.isnan(bounds).any(axis=1)
    mask = pa.array(missing) if missing.any() else None
    children = [pa.array(bounds[:, i], mask=missing) for i in range(4)]
    return pa.StructArray.from_arrays(children, names=["xmin", "ymin", "xmax", "ymax"], mask=mask)


def projjson(crs: CRS | None) -> dict[str, Any] | None:
    return None if crs is None else dict(crs.to_json_dict())


def geo_metadata(
    column: str,
    summary: GeometrySummary,
    crs: CRS | None,
    version: GeoParquetVersion = "1.1.0",
    *,
    covering: bool = True,
) -> dict[str, Any]:
    """The file's ``geo`` metadata (GeoParquet ``version``). ``crs`` None = unknown (JSON null): a
    missing key would mean OGC:CRS84."""
    meta: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(summary.types),
        "crs": projjson(crs),
    }
    if summary.bbox is not None:
        meta["bbox"] = summary.bbox
    if covering and version != "1.0.0":
        meta["covering"] = {"bbox": {k: [BBOX_COLUMN, k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    return {"version": version, "primary_column": column, "columns": {column: meta}}


@dataclass(frozen=True)
class WriteOptions:
    row_group_size: int = 100_000
    compression: Compression = "zstd"
    version: GeoParquetVersion = "1.1.0"
    covering: bool = True

    @property
    def with_bbox(self) -> bool:
        return self.covering and self.version != "1.0.0"


def prepare(table: pa.Table, geometry: str, bounds: np.ndarray, options: WriteOptions) -> pa.Table:
    """The table as written: metadata stripped from fields, the bbox column appended (1.1.0)."""
    fields = [pa.field(f.name, f.type, f.nullable) for f in table.schema]
    table = pa.Table.from_arrays(table.columns, schema=pa.schema(fields))
    index = table.schema.get_field_index(geometry)
    if not pa.types.is_binary(table.schema.field(index).type):
        table = table.set_column(index, geometry, table.column(index).cast(pa.binary()))
    if options.with_bbox:
        if BBOX_COLUMN in table.column_names:
            raise VectorInputError(
                f"the source has a column {BBOX_COLUMN!r}: the bbox covering column needs the name "
                "(rename it, or write geoparquet_version 1.0.0, which has no covering)"
            )
        table = table.append_column(pa.field(BBOX_COLUMN, BBOX_TYPE), bbox_column(bounds))
    return table


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet column paths of the schema's leaves (``bbox.xmin``; lists: ``name.list.element``)."""

    def walk(name: str, kind: pa.DataType) -> list[str]:
        if pa.types.is_struct(kind):
            return [p for i in range(kind.num_fields) for p in walk(f"{name}.{kind.field(i).name}", kind.field(i).type)]
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return walk(f"{name}.list.element", kind.value_type)
        if pa.types.is_map(kind):
            return walk(f"{name}.key_value.key", kind.key_type) + walk(f"{name}.key_value.value", kind.item_type)
        return [name]

    return [p for f in schema for p in walk(f.name, f.type)]


class GeoParquetWriter:
    """Row groups of exactly ``row_group_size`` rows (the last one less) into one file. The ``geo``
    metadata goes into the schema up front (readers such as geopandas take it from the Arrow
    schema), so ``summary`` must already describe every row the file will hold."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        geometry: str,
        crs: CRS | None,
        options: WriteOptions,
        summary: GeometrySummary,
    ) -> None:
        self.path, self.options, self.summary = path, options, summary
        meta = geo_metadata(geometry, summary, crs, options.version, covering=options.with_bbox)
        schema = schema.with_metadata({"geo": json.dumps(meta, separators=(",", ":"))})
        compression = None if options.compression == "none" else options.compression
        # No dictionary for WKB and bbox values (nearly all distinct: building one is wasted work), no
        # min/max statistics for WKB bytes (meaningless; the bbox columns' statistics are the ones
        # readers prune with): about a third less time than pyarrow's defaults.
        plain = {geometry, BBOX_COLUMN}
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression=compression,
            use_dictionary=[f.name for f in schema if f.name not in plain],
            write_statistics=[p for p in _leaf_paths(schema) if p != geometry],
            store_schema=True,
        )
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.row_groups = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Append rows already prepared (``prepare``)."""
        self._pending.append(table.replace_schema_metadata(None))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.options.row_group_size:
            self._flush(self.options.row_group_size)

    def _flush(self, rows: int) -> None:
        buffered = pa.concat_tables(self._pending)
        group, rest = buffered.slice(0, rows), buffered.slice(rows)
        self._writer.write_table(group, row_group_size=max(1, rows))
        self.row_groups += 1
        self.rows += rows
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> dict[str, Any]:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        summary = {**self.summary.to_dict(), "rows": self.rows}
        return {**summary, "row_groups": self.row_groups, "bytes": self.path.stat().st_size}


def wkb_types(wkb: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(shapely type ids, has_z) read from each WKB value's header (byte order + ISO type code, or
    EWKB flags), without parsing the geometry; NULLs get type id -1."""
    if isinstance(wkb, pa.ChunkedArray):
        wkb = wkb.combine_chunks() if wkb.num_chunks != 1 else wkb.chunk(0)
    array = wkb.cast(pa.binary()) if not pa.types.is_binary(wkb.type) else wkb
    if len(array) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=bool)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array)]
    values = array.buffers()[2]
    data = np.frombuffer(values, dtype=np.uint8) if values is not None else np.zeros(0, np.uint8)
    lengths = pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    valid = array.is_valid().to_numpy(zero_copy_only=False) & (lengths >= 5)
    start = np.where(valid, offsets, 0).astype(np.int64)
    header = np.zeros((len(array), 5), dtype=np.uint32)
    if valid.any():
        header[valid] = data[start[valid, None] + np.arange(5)]
    little = header[:, 0] == 1
    code = np.where(
        little,
        header[:, 1] | (header[:, 2] << 8) | (header[:, 3] << 16) | (header[:, 4] << 24),
        header[:, 4] | (header[:, 3] << 8) | (header[:, 2] << 16) | (header[:, 1] << 24),
    ).astype(np.uint32)
    has_z = ((code & 0x80000000) != 0) | np.isin((code & 0x0FFFFFFF) // 1000, (1, 3))
    base = ((code & 0x0FFFFFFF) % 1000).astype(np.int64)
    type_ids = np.full(len(array), -1, dtype=np.int64)
    for wkb_code, shapely_id in ((1, 0), (2, 1), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7)):
        type_ids[valid & (base == wkb_code)] = shapely_id
    return type_ids, has_z & valid


def write_sorted(
    path: Path,
    table: pa.Table,
    geometry: str,
    crs: CRS | None,
    options: WriteOptions,
    *,
    extent: Extent | None,
    order: bool = True,
    bounds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write one in-memory table, Hilbert-ordered over ``extent`` (default: its own) unless ``order``
    is False; the result is the file's summary (rows, bbox, geometry_types, row_groups, bytes).
    ``bounds`` (N x 4, NaN for NULL or empty) when the caller has them: the WKB is then not parsed."""
    if bounds is None:
        bounds, types, has_z = describe_geometries(table.column(geometry))
    else:
        types, has_z = wkb_types(table.column(geometry))
        types[np.isnan(bounds[:, 0])] = -1  # empty geometries: no bounds, no type to declare
    summary = GeometrySummary()
    summary.add(bounds, types, has_z)
    if order and table.num_rows > 1:
        over = extent or (tuple(summary.bbox) if summary.bbox else None)
        if over is not None:
            index = hilbert_order(bounds, over)  # type: ignore[arg-type]
            table, bounds = table.take(pa.array(index)), bounds[index]
    prepared = prepare(table, geometry, bounds, options)
    writer = GeoParquetWriter(path, prepared.schema, geometry, crs, options, summary)
    writer.write(prepared)
    return writer.close()


def concatenate(path: Path, parts: list[Path], geometry: str, crs: CRS | None, options: WriteOptions) -> dict[str, Any]:
    """One file from part files of the same schema, in order, re-cut into row groups of
    ``row_group_size`` (read one row group at a time)."""
    if not parts:
        raise ValueError("no part to concatenate")
    summary = GeometrySummary()
    for part in parts:
        summary.merge(read_geo_metadata(part)["columns"][geometry])
    schema = pq.read_schema(parts[0]).remove_metadata()
    writer = GeoParquetWriter(path, schema, geometry, crs, options, summary)
    for part in parts:
        source = pq.ParquetFile(part)
        for index in range(source.num_row_groups):
            writer.write(source.read_row_group(index))
    return writer.close()


def read_geo_metadata(path: Path) -> dict[str, Any]:
    return dict(json.loads(pq.read_schema(path).metadata[b"geo"]))
