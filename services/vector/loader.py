"""Plan a source's layers into tables, and load a feature range of one layer by binary COPY.

A layer's plan (``LayerPlan``) is made once, by the inspect step, and travels in task results:
the laundered column mapping, the Postgres types, the geometry column and CRS. A load reads the
features ``[start, stop)`` in Arrow batches (pyogrio, ``skip_features`` / ``max_features``) and
streams them into the layer's staging table with ``fid`` = the feature's position in the layer,
so ranges loaded by parallel tasks never overlap and a retried range first deletes what an
earlier attempt of it committed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import psycopg
import pyarrow as pa
from psycopg.copy import QueuedLibpqWriter
from pyogrio.errors import DataLayerError, DataSourceError
from pyogrio.raw import open_arrow

from services.vector.copy_binary import SIGNATURE, TRAILER, VECTORISED_COPY_TYPES, encode_rows
from services.vector.geometry import (
    GeometryColumn,
    GeometryPolicy,
    VectorInputError,
    column_for,
    prepare_geometries,
    srid_of,
    transformer_for,
    union_bounds,
)
from services.vector.names import column_mapping, identifier_problem
from services.vector.postgis import FID, GEOM, TableColumn, copy_statement, copy_types, delete_range
from services.vector.source import LocalSource
from services.vector.types import TEXT, ColumnType, column_type, column_values

DEFAULT_BATCH_SIZE = 16_384  # small batches: the server parses one while the next is read (measured: 65 536 slower)
T = TypeVar("T")
_BY_SQL = {
    t.sql: t
    for t in (
        column_type(pa.field("x", dtype))
        for dtype in (
            pa.int16(),
            pa.int32(),
            pa.int64(),
            pa.uint64(),
            pa.float32(),
            pa.float64(),
            pa.bool_(),
            pa.date32(),
            pa.time64("us"),
            pa.timestamp("ms"),
            pa.timestamp("ms", tz="UTC"),
            pa.list_(pa.int64()),
            pa.binary(),
        )
    )
}
_BY_SQL["text"] = TEXT


@dataclass(frozen=True)
class LayerPlan:
    layer: str
    table: str
    staging: str
    feature_count: int
    source_fields: list[str]
    columns: list[TableColumn]
    geometry_field: str | None
    geometry: GeometryColumn | None
    source_crs: str | None  # as GDAL reported it (EPSG:n or WKT); None: no CRS
    source_srid: int  # 0: no CRS, or one without an EPSG code known to PostGIS
    source_crs_wkt: str | None  # recorded when the CRS has no EPSG code
    driver: str = ""
    blob_name: str = ""  # the file the layer is in (a prefix job has several)
    etag: str = ""  # its version when planned: a load of another version fails

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "table": self.table,
            "staging": self.staging,
            "feature_count": self.feature_count,
            "source_fields": self.source_fields,
            "columns": [{"name": c.name, "type": c.sql_type, "copy_type": c.copy_type} for c in self.columns],
            "geometry_field": self.geometry_field,
            "geometry": None if self.geometry is None else self.geometry.to_dict(),
            "source_crs": self.source_crs,
            "source_srid": self.source_srid,
            "source_crs_wkt": self.source_crs_wkt,
            "driver": self.driver,
            "blob_name": self.blob_name,
            "etag": self.etag,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        return cls(
            layer=str(data["layer"]),
            table=str(data["table"]),
            staging=str(data["staging"]),
            feature_count=int(data["feature_count"]),
            source_fields=list(data["source_fields"]),
            columns=[TableColumn(c["name"], c["type"], c["copy_type"]) for c in data["columns"]],
            geometry_field=data.get("geometry_field"),
            geometry=GeometryColumn.from_dict(data["geometry"]) if data.get("geometry") else None,
            source_crs=data.get("source_crs"),
            source_srid=int(data.get("source_srid", 0)),
            source_crs_wkt=data.get("source_crs_wkt"),
            driver=str(data.get("driver", "")),
            blob_name=str(data.get("blob_name", "")),
            etag=str(data.get("etag", "")),
        )

    def column_mapping(self) -> dict[str, str]:
        return dict(zip(self.source_fields, (c.name for c in self.columns), strict=True))


def _arrow_schema(source: LocalSource, layer: str) -> tuple[pa.Schema, str | None]:
    """The layer's Arrow schema and the name of its WKB geometry field (None: no geometry)."""
    try:
        with open_arrow(source.path, layer=layer, use_pyarrow=True, batch_size=1, **source.open_options) as (
            meta,
            reader,
        ):
            schema = reader.schema
    except (DataSourceError, DataLayerError) as exc:
        raise VectorInputError(f"layer {layer!r} cannot be read ({str(exc).splitlines()[0][:300]})") from exc
    geometry_field = None
    for item in schema:
        if (item.metadata or {}).get(b"ARROW:extension:name") == b"geoarrow.wkb":
            geometry_field = item.name
    if geometry_field is None and meta.get("geometry_name") in schema.names:
        geometry_field = str(meta["geometry_name"])
    return schema, geometry_field


def plan_layer(
    source: LocalSource,
    layer: str,
    *,
    table: str,
    staging: str,
    target_srid: int | None,
    srid_known: Callable[[int], bool],
    assume_srid: int | None = None,
    blob_name: str = "",
) -> LayerPlan:
    """Everything a load of ``layer`` needs; bad input (unreadable layer, CRS) raises VectorInputError."""
    problem = identifier_problem(table)
    if problem:
        raise VectorInputError(f"table name {table!r} (from layer {layer!r}) {problem}")
    info = source.info(layer)
    schema, geometry_field = _arrow_schema(source, layer)
    crs = info.get("crs") or (f"EPSG:{assume_srid}" if assume_srid else None)
    srid, wkt = srid_of(crs)
    if srid and not srid_known(srid):
        srid, wkt = 0, wkt or crs
    column_srid = srid
    if target_srid is not None:
        if not srid_known(target_srid):
            raise VectorInputError(f"target_srid {target_srid} is not in PostGIS's spatial_ref_sys")
        transformer_for(crs, target_srid)  # raises when the source has no CRS
        column_srid = target_srid
    fields = [f for f in schema if f.name != geometry_field]
    mapping = column_mapping([f.name for f in fields], reserved=(FID, GEOM))
    columns = []
    for item in fields:
        ctype = column_type(item)
        columns.append(TableColumn(mapping[item.name], ctype.sql, ctype.copy_type))
    geometry = None
    if geometry_field is not None:
        geometry = column_for(info.get("geometry_type"), column_srid)
        if source.declares_curves(layer):  # curves stay curves: a generic column takes them
            geometry = GeometryColumn("Geometry", geometry.has_z, column_srid)
    return LayerPlan(
        layer=layer,
        table=table,
        staging=staging,
        feature_count=max(0, int(info.get("features") or 0)),
        source_fields=[f.name for f in fields],
        columns=columns,
        geometry_field=geometry_field,
        geometry=geometry,
        source_crs=crs,
        source_srid=srid,
        source_crs_wkt=wkt,
        driver=source.driver,
        blob_name=blob_name,
        etag=source.etag,
    )


@dataclass
class LoadStats:
    read: int = 0
    written: int = 0
    made_valid: int = 0
    null_geometries: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bounds: tuple[float, float, float, float] | None = None
    replaced_rows: int = 0
    bounds_incomplete: bool = False  # some geometries were never read by GEOS here (not in ``bounds``)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # where the load's time went

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "written": self.written,
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": dict(sorted(self.skipped.items())),
            "made_valid": self.made_valid,
            "null_geometries": self.null_geometries,
            "bounds": None if self.bounds is None else list(self.bounds),
            "replaced_rows": self.replaced_rows,
            "phase_seconds": {name: round(seconds, 3) for name, seconds in self.phase_seconds.items()},
        }

    @classmethod
    def combined(cls, parts: list[LoadStats]) -> LoadStats:
        """The stats of slices of one range loaded side by side (phase seconds summed over them)."""
        total = cls(skipped=sum((p.skipped for p in parts), Counter()))
        for part in parts:
            total.read += part.read
            total.written += part.written
            total.made_valid += part.made_valid
            total.null_geometries += part.null_geometries
            total.replaced_rows += part.replaced_rows
            total.bounds = union_bounds(total.bounds, part.bounds)
            total.bounds_incomplete |= part.bounds_incomplete
            for name, seconds in part.phase_seconds.items():
                total.phase_seconds[name] = total.phase_seconds.get(name, 0.0) + seconds
        if total.bounds_incomplete:
            total.bounds = None
        return total


def _column_type(column: TableColumn) -> ColumnType:
    return _BY_SQL.get(column.sql_type, TEXT)


def load_range(
    conn: psycopg.Connection[Any],
    source: LocalSource,
    plan: LayerPlan,
    *,
    schema: str,
    start: int,
    stop: int | None,
    policy: GeometryPolicy,
    target_srid: int | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> LoadStats:
    """Copy features ``[start, stop)`` (stop None: to the end) of the layer into its staging table,
    in the caller's transaction, after deleting whatever that range already holds there."""
    stats = LoadStats()
    transformer = transformer_for(plan.source_crs, target_srid) if plan.geometry is not None else None
    ctypes = [_column_type(c) for c in plan.columns]
    has_geometry = plan.geometry is not None and plan.geometry_field is not None
    clock = _PhaseClock(stats.phase_seconds)
    stats.replaced_rows = delete_range(conn, schema, plan.staging, start, stop if stop is not None else 2**62)
    clock.lap("delete_range")
    max_features = None if stop is None else max(0, stop - start)
    if max_features == 0:
        return stats
    position = start
    try:
        reading = open_arrow(
            source.path,
            layer=plan.layer,
            use_pyarrow=True,
            skip_features=start,
            batch_size=batch_size if max_features is None else max(1, min(batch_size, max_features)),
            **source.open_options,
        )
        statement = copy_statement(schema, plan.staging, plan.columns, has_geometry)
        types = copy_types(plan.columns, has_geometry)
        vectorised = all(t in VECTORISED_COPY_TYPES for t in types)  # else psycopg's write_row
        # A writer thread sends each batch while the next is read (at most 1024 chunks of 128 KiB queued).
        with (
            reading as (_meta, reader),
            conn.cursor() as cur,
            cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy,
        ):
            copy.set_types(types)
            if vectorised:
                copy.write(SIGNATURE)
            clock.lap("open")  # includes skipping to ``start``
            for read in clock.timed_iter(reader, "read"):  # open_arrow takes no max_features: the range ends here
                batch = read
                if max_features is not None and position + read.num_rows > start + max_features:
                    batch = read.slice(0, start + max_features - position)
                rows = _prepare_batch(batch, plan, stats, policy, transformer, position, has_geometry)
                clock.lap("geometry")
                if vectorised:
                    encoded = encode_rows(rows, types)
                    clock.lap("encode")
                    copy.write(encoded)
                    clock.lap("copy_send")
                else:
                    _write_rows(copy, rows, ctypes)
                    clock.lap("copy_rows")
                position += batch.num_rows
                if max_features is not None and position >= start + max_features:
                    break
            if vectorised:
                copy.write(TRAILER)
            clock.lap("copy_send")
        clock.lap("copy_finish")  # the server's end of the COPY
    except (DataSourceError, DataLayerError) as exc:
        raise VectorInputError(f"layer {plan.layer!r}: reading failed ({str(exc).splitlines()[0][:300]})") from exc
    if stats.bounds_incomplete:
        stats.bounds = None  # some geometries were never measured here: the swap's scan gives the extent
    return stats


def _prepare_batch(
    batch: pa.RecordBatch,
    plan: LayerPlan,
    stats: LoadStats,
    policy: GeometryPolicy,
    transformer: Any,
    position: int,
    has_geometry: bool,
) -> list[pa.Array]:
    """The COPY columns of one batch (fid, the layer's fields, geometry EWKB), rows left out by the
    geometry policy removed; counts go to ``stats``."""
    n = batch.num_rows
    stats.read += n
    fids = np.arange(position, position + n, dtype=np.int64)
    geometry: list[pa.Array] = []
    if has_geometry:
        assert plan.geometry is not None and plan.geometry_field is not None
        wkb = batch.column(plan.geometry_field)
        prepared = prepare_geometries(wkb, plan.geometry, policy, transformer=transformer, first_fid=position)
        stats.bounds_incomplete |= not prepared.bounds_complete
        stats.skipped.update(prepared.skipped)
        stats.made_valid += prepared.made_valid
        stats.null_geometries += prepared.null_geometries
        stats.bounds = union_bounds(stats.bounds, prepared.bounds)
        if not prepared.keep.all():
            batch = batch.filter(pa.array(prepared.keep))
            fids = fids[prepared.keep]
        geometry = [prepared.ewkb]
    stats.written += batch.num_rows
    return [pa.array(fids), *(batch.column(name) for name in plan.source_fields), *geometry]


class _PhaseClock:
    """Adds the time since the previous lap to a named phase."""

    def __init__(self, totals: dict[str, float]) -> None:
        self._totals = totals
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._totals[phase] = self._totals.get(phase, 0.0) + now - self._last
        self._last = now

    def timed_iter(self, items: Iterable[T], phase: str) -> Iterator[T]:
        iterator = iter(items)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.lap(phase)
            yield item


def _write_rows(copy: Any, columns: list[pa.Array], ctypes: list[ColumnType]) -> None:
    """psycopg's row by row path, for column types the vectorised encoder does not take."""
    fids, *fields = columns
    values = [column_values(array, ctype) for array, ctype in zip(fields, ctypes, strict=False)]
    extra = [array.to_pylist() for array in fields[len(ctypes) :]]  # the geometry EWKB
    for row in zip(fids.to_pylist(), *values, *extra, strict=True):
        copy.write_row(row)
