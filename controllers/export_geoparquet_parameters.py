"""export_geoparquet's parameters, and the pure helpers of its fan-out and output names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from controllers.process_raster_parameters import SourceEtag
from schemas.blob_names import BlobPath, ContainerName
from services.vector.geoparquet import Compression, GeoParquetVersion, WriteOptions

PARQUET_SUFFIX = ".parquet"


def _postgres_name(value: str | None) -> str | None:
    """Any existing Postgres name (quoted in every statement): 1-63 bytes, no control character."""
    if value is None:
        return value
    if not value or len(value.encode()) > 63 or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must be a Postgres name: 1-63 bytes without control characters")
    return value


class ExportGeoParquetParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    table: str | None = Field(
        default=None, description="Source: a PostGIS table (any name; quoted). Exactly one of table and source_blob."
    )
    source_schema: str | None = Field(
        default=None,
        validation_alias=AliasChoices("schema", "source_schema"),
        description="Schema of 'table' ('schema' also accepted); default the VECTOR_SCHEMA setting.",
    )
    geometry_column: str | None = Field(
        default=None, description="The table's geometry column; default 'geom', else its first geometry column."
    )
    container: ContainerName = Field(default="bronze", description="Container of source_blob.")
    source_blob: BlobPath | None = Field(
        default=None,
        description="Source: a vector file (.gpkg, .shp, .zip, .geojson, .fgb, .csv …) in 'container'.",
    )
    layer: str | None = Field(default=None, min_length=1, max_length=255, description="Layer of source_blob.")
    output_container: ContainerName = Field(default="silver", description="Container the GeoParquet goes to.")
    blob_name: BlobPath | None = Field(
        default=None,
        description="Output name, ending in .parquet (layout 'dataset': the folder of the parts). Default: "
        "geoparquet/<schema>/<table>.parquet or geoparquet/<source_blob>.parquet.",
    )
    compression: Compression = Field(default="zstd", description="Parquet compression codec.")
    row_group_size: int = Field(default=100_000, ge=1, le=1_000_000, description="Rows per row group.")
    spatial_ordering: Literal["hilbert", "none"] = Field(
        default="hilbert", description="Row order: along a Hilbert curve of the bbox centres, or as read."
    )
    geoparquet_version: GeoParquetVersion = Field(
        default="1.1.0", description="GeoParquet version (1.1.0 adds the bbox covering column)."
    )
    rows_per_part: int = Field(
        default=500_000, ge=1, le=100_000_000, description="A larger table fans out into parts of about this many rows."
    )
    layout: Literal["file", "dataset"] = Field(
        default="file",
        description="file: one file (parts assembled); dataset: the parts as <blob_name>/part-NNNNN.parquet.",
    )
    source_etag: SourceEtag | None = Field(default=None, description="source_blob's version; recorded at submission.")
    source_version: str | None = Field(
        default=None, max_length=200, description="The table's version; recorded at submission (a change is a new job)."
    )

    _check_names = field_validator("table", "source_schema", "geometry_column")(
        classmethod(lambda cls, v: _postgres_name(v))
    )

    @field_validator("blob_name")
    @classmethod
    def _parquet_name(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith(PARQUET_SUFFIX):
            raise ValueError(f"must end in {PARQUET_SUFFIX}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ExportGeoParquetParameters:
        if (self.table is None) == (self.source_blob is None):
            raise ValueError("give exactly one of table and source_blob")
        if self.table is None and (self.source_schema or self.geometry_column or self.source_version):
            raise ValueError("schema, geometry_column and source_version go with table, not source_blob")
        if self.source_blob is None and (self.layer or self.source_etag):
            raise ValueError("layer and source_etag go with source_blob, not table")
        return self

    def write_options(self) -> WriteOptions:
        return WriteOptions(
            row_group_size=self.row_group_size, compression=self.compression, version=self.geoparquet_version
        )


def output_blob(params: ExportGeoParquetParameters, default_schema: str) -> str:
    if params.blob_name:
        return params.blob_name
    if params.table is not None:
        return f"geoparquet/{params.source_schema or default_schema}/{params.table}{PARQUET_SUFFIX}"
    return f"geoparquet/{params.source_blob}{PARQUET_SUFFIX}"


def part_blob(output: str, layout: str, job_id: str, index: int, parts: int) -> str:
    """Where part ``index`` goes: the output itself (one part, one file), a part of the dataset, or a
    job-scoped temporary part (several parts assembled into one file)."""
    if layout == "file" and parts == 1:
        return output
    if layout == "dataset":
        return f"{output}/part-{index:05d}{PARQUET_SUFFIX}"
    return f"{output}.parts/{job_id[:16]}/part-{index:05d}{PARQUET_SUFFIX}"


def item_blob(output: str) -> str:
    """The STAC Item beside the output: ``x.parquet`` → ``x.item.json``."""
    return output[: -len(PARQUET_SUFFIX)] + ".item.json"


def assemble_parameters(plan: dict[str, Any], writes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    parts = [writes[key] for key in sorted(writes)]
    return {"plan": plan, "parts": parts}
