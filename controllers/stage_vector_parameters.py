"""stage_vector's parameters, and the pure helpers of its fan-out and fan-in."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from controllers.process_raster_parameters import SourceEtag
from schemas.blob_names import BlobPath, ContainerName
from services.engine import StageResults
from services.inventory.chunks import BlobPrefix
from services.vector.geometry import GeometryPolicy, union_bounds
from services.vector.loader import LayerPlan
from services.vector.names import identifier_problem
from services.vector.source import CsvOptions


def _identifier(value: str | None) -> str | None:
    if value is not None and (problem := identifier_problem(value)):
        raise ValueError(f"{value!r} {problem}")
    return value


class StageVectorParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    container: ContainerName = Field(default="bronze", description="Container holding the source file.")
    blob_name: BlobPath | None = Field(
        default=None,
        description="The source: .gpkg, .shp (sidecars beside it), .zip (a zipped shapefile or one vector file), "
        ".geojson/.json, .geojsonl/.geojsons, .fgb or .csv. Exactly one of blob_name and prefix.",
    )
    prefix: BlobPrefix | None = Field(
        default=None,
        max_length=1024,
        description="Load every vector file whose name starts with this (one table per file and layer; "
        "with 'table', '<table>_<file>'). Exactly one of blob_name and prefix.",
    )
    layer: str | None = Field(default=None, min_length=1, max_length=255, description="Layer to load; default all.")
    table: str | None = Field(
        default=None,
        description="Target table (a-z, 0-9, _; starting with a letter or _; not a reserved word). With several "
        "layers, the prefix of '<table>_<layer>'. Default: the file's stem (plus the layer's name).",
    )
    target_schema: str | None = Field(
        default=None,
        validation_alias=AliasChoices("schema", "target_schema"),
        description="Target schema ('schema' also accepted); default the VECTOR_SCHEMA setting.",
    )
    target_srid: int | None = Field(
        default=None, ge=1, le=999_999, description="Reproject to EPSG:<srid>; default keep."
    )
    source_srid: int | None = Field(
        default=None, ge=1, le=999_999, description="EPSG code of a source that has no CRS (e.g. CSV); default none."
    )
    if_exists: Literal["fail", "replace", "append"] = Field(default="fail", description="When the table exists.")
    geometry_policy: GeometryPolicy = Field(
        default="make_valid",
        description="Invalid geometries: make_valid (repair), skip (leave out), fail, or unchecked (no validity "
        "check: geometries load as they are, fastest).",
    )
    csv_geometry_column: str | None = Field(default=None, max_length=255, description="CSV: WKT column name.")
    csv_x_column: str | None = Field(default=None, max_length=255, description="CSV: x / longitude column name.")
    csv_y_column: str | None = Field(default=None, max_length=255, description="CSV: y / latitude column name.")
    csv_separator: Literal["COMMA", "SEMICOLON", "TAB", "SPACE"] | None = Field(default=None, description="CSV.")
    features_per_task: int = Field(
        default=200_000,
        ge=1,
        le=10_000_000,
        description="Features one load task copies (a layer's fan-out); a task copies a range of 40 000 or "
        "more as two slices side by side.",
    )
    analyze: bool = Field(
        default=True,
        description="ANALYZE each new table in the swap, so the planner has statistics at once; false leaves "
        "it to autovacuum (like ogr2ogr), saving a sampling pass.",
    )
    source_etag: SourceEtag | None = Field(default=None, description="Source version; recorded at submission.")

    _check_table = field_validator("table")(classmethod(lambda cls, v: _identifier(v)))
    _check_schema = field_validator("target_schema")(classmethod(lambda cls, v: _identifier(v)))

    @model_validator(mode="after")
    def _one_source(self) -> StageVectorParameters:
        if (self.blob_name is None) == (self.prefix is None):
            raise ValueError("give exactly one of blob_name and prefix")
        if self.prefix is not None and self.source_etag is not None:
            raise ValueError("source_etag pins one blob: it cannot be given with prefix")
        return self

    @property
    def source_label(self) -> str:
        return f"{self.container}/{self.blob_name}" if self.blob_name else f"{self.container}/{self.prefix}*"

    def csv_options(self) -> CsvOptions:
        return CsvOptions(self.csv_geometry_column, self.csv_x_column, self.csv_y_column, self.csv_separator)


def swap_parameters(loads: StageResults) -> dict[str, Any]:
    """The swap task's parameters from the load results: each table's plan (carried by its first
    range's result) and the rows its loads wrote."""
    layers: dict[str, dict[str, Any]] = {}
    schemas: dict[str, str] = {}
    for result in loads.values():
        entry = layers.setdefault(result["table"], {"written": 0, "plan": None})
        entry["written"] += int(result["written"])
        if result.get("plan") is not None:
            entry["plan"] = result["plan"]
            schemas = {"schema": result["schema"], "extension_schema": result["extension_schema"]}
    missing = sorted(table for table, entry in layers.items() if entry["plan"] is None)
    if missing:
        raise ValueError(f"no load result carries the plan of {', '.join(missing)}")
    return {**schemas, "layers": [layers[table] for table in sorted(layers)]}


def feature_ranges(count: int, per_task: int) -> list[tuple[int, int | None]]:
    """[start, stop) ranges covering ``count`` features, the last open-ended (None: to the end)."""
    parts = max(1, math.ceil(count / per_task))
    ranges: list[tuple[int, int | None]] = [(i * per_task, (i + 1) * per_task) for i in range(parts)]
    ranges[-1] = (ranges[-1][0], None)
    return ranges


MIN_SLICE_FEATURES = 20_000  # a load task's range smaller than two of these loads as one slice


def load_slices(start: int, stop: int | None, feature_count: int) -> list[tuple[int, int | None]]:
    """The two halves of a load task's range ``[start, stop)`` (stop None: to the end of a layer of
    ``feature_count`` features, the last half open-ended too), or the range itself when small."""
    end = feature_count if stop is None else stop
    if end - start < 2 * MIN_SLICE_FEATURES:
        return [(start, stop)]
    middle = start + (end - start) // 2
    return [(start, middle), (middle, stop)]


def table_summary(
    schema: str,
    layer: dict[str, Any],
    loads: list[dict[str, Any]],
    rows: int | None,
    extent: list[float] | None = None,
) -> dict[str, Any]:
    """One table of the job result, from its plan, its load tasks' results and the swap's row count
    and extent (the database's, over the loaded rows; else the loads' bounds)."""
    plan = LayerPlan.from_dict(layer)
    mine = [r for r in loads if r["table"] == plan.table]
    reasons: dict[str, int] = {}
    bounds = None
    for r in mine:
        for reason, n in r["skipped_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
        bounds = union_bounds(bounds, tuple(r["bounds"]) if r["bounds"] else None)
    geometry = plan.geometry
    return {
        "schema": schema,
        "table": plan.table,
        "source": plan.blob_name,
        "layer": plan.layer,
        "features_read": sum(int(r["read"]) for r in mine),
        "features_written": sum(int(r["written"]) for r in mine),
        "features_skipped": sum(reasons.values()),
        "skipped_reasons": dict(sorted(reasons.items())),
        "made_valid": sum(int(r["made_valid"]) for r in mine),
        "null_geometries": sum(int(r["null_geometries"]) for r in mine),
        "rows": rows,
        "extent": extent if extent is not None else None if bounds is None else list(bounds),
        "srid": geometry.srid if geometry else None,
        "geometry_type": geometry.sql if geometry else None,
        "source_srid": plan.source_srid,
        "source_crs_wkt": plan.source_crs_wkt,
        "columns": [
            {"source": src, "name": col.name, "type": col.sql_type}
            for src, col in zip(plan.source_fields, plan.columns, strict=True)
        ],
        "load_tasks": len(mine),
    }
