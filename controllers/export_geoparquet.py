"""export_geoparquet: a PostGIS table (or a vector file in blob storage) → GeoParquet + a STAC Item.

Stages (task keys in brackets):
1. plan [source]        inspect the source: the table's columns, geometry column, CRS (EPSG code, or the
                        WKT stage_vector recorded for a CRS without one), row count and extent; a table
                        of more than ``rows_per_part`` rows is cut into parts along the Hilbert curve
                        (services/vector/geoparquet_postgis.plan_parts). A vector file is one part.
                        Bad input (no such table, no geometry column, not a vector file) fails here.
2. write [part_NNNNN]   each part reads its rows, orders them along the Hilbert curve of the whole
                        extent and writes GeoParquet (services/vector/geoparquet.py) to its blob: the
                        output itself when there is one part, ``<blob_name>/part-NNNNN.parquet`` for
                        the dataset layout, else a temporary part. A re-run overwrites the same blob.
3. assemble [assemble]  checks the parts hold the planned rows; layout ``file`` with several parts:
                        one file from the parts in order (row groups re-cut to ``row_group_size``),
                        temporary parts deleted; ``dataset``: stale parts of an earlier run deleted.
                        Writes the STAC Item (table, projection and file extensions) beside the output.
Parameters and the pure helpers: controllers/export_geoparquet_parameters.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pystac
from psycopg.rows import tuple_row
from pyproj import CRS

from controllers.export_geoparquet_parameters import (
    ExportGeoParquetParameters,
    assemble_parameters,
    item_blob,
    output_blob,
    part_blob,
)
from controllers.source_version import pin_source_etag
from controllers.vector_job import VectorJobController
from schemas.errors import PermanentTaskError
from services.engine import JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.raster.memory import release_free_memory, track_peak_rss
from services.vector import geoparquet_postgis as tables
from services.vector.geometry import VectorInputError
from services.vector.geoparquet import MEDIA_TYPE, concatenate, write_sorted
from services.vector.geoparquet_stac import ParquetAsset, arrow_columns, build_item, item_id_for
from services.vector.source import LocalSource, download, open_source

SOURCE_KEY, ASSEMBLE_KEY = "source", "assemble"


class ExportGeoParquetController(VectorJobController[ExportGeoParquetParameters]):
    job_type = "export_geoparquet"
    description = "A PostGIS table or vector file → GeoParquet (Hilbert-ordered, bbox covering, zstd) + STAC Item."
    parameters_model = ExportGeoParquetParameters

    def stage_definitions(self) -> tuple[StageDefinition, ...]:
        return (
            StageDefinition("plan", self.plan),
            StageDefinition("write", self.in_a_task_slot(self.write)),
            StageDefinition("assemble", self.in_a_task_slot(self.assemble)),
        )

    def schema_of(self, params: ExportGeoParquetParameters) -> str:
        return params.source_schema or self._default_schema

    # --- submission ---------------------------------------------------------------------------

    def resolve_parameters(self, params: ExportGeoParquetParameters) -> ExportGeoParquetParameters:
        """Pin the source's version: a vector file's etag, or the table's (file node and change
        counters): a changed source is a new job. A caller's own etag must match (409)."""
        if params.source_blob is not None:
            current = pin_source_etag(self._storage, params.container, params.source_blob, params.source_etag)
            return params.model_copy(update={"source_etag": current})
        if params.source_version is not None:
            return params
        with self._db.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(
                """SELECT c.relfilenode::text || ':' || coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)::text
                   FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                   WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text))""",
                (self.schema_of(params), params.table),
            ).fetchone()
        return params.model_copy(update={"source_version": str(row[0]) if row else "missing"})

    # --- handlers -----------------------------------------------------------------------------

    def plan(self, ctx: TaskContext[ExportGeoParquetParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        output = output_blob(params, self._default_schema)
        if params.table is not None:
            with self._db.connection() as conn, conn.transaction():
                source = tables.inspect_table(conn, self.schema_of(params), params.table, params.geometry_column)
                parts = tables.plan_parts(conn, source, params.rows_per_part, self._max_tasks)
            return {"kind": "table", "table": source.to_dict(), "rows": source.rows, "parts": parts, "output": output}
        local = self._blob_source(params)
        layer = self._layer(params, local)
        info = local.info(layer)
        if not info.get("geometry_type"):
            raise VectorInputError(f"layer {layer!r} of {params.source_blob} has no geometry")
        return {
            "kind": "blob",
            "layer": layer,
            "etag": local.etag,
            "rows": int(info.get("features") or 0),
            "parts": [[]],
            "output": output,
        }

    def _blob_source(self, params: ExportGeoParquetParameters) -> LocalSource:
        assert params.source_blob is not None
        local = open_source(self._storage, params.container, params.source_blob)
        if params.source_etag is not None and local.etag != params.source_etag:
            raise PermanentTaskError(f"{params.source_blob} changed after submission; submit again")
        return local

    @staticmethod
    def _layer(params: ExportGeoParquetParameters, local: LocalSource) -> str:
        names = [name for name, _ in local.layers()]
        if params.layer is not None:
            if params.layer not in names:
                raise VectorInputError(
                    f"{params.source_blob} has no layer {params.layer!r} (layers: {', '.join(names)})"
                )
            return params.layer
        if len(names) != 1:
            raise VectorInputError(f"{params.source_blob} has {len(names)} layers: name one with 'layer'")
        return names[0]

    def write(self, ctx: TaskContext[ExportGeoParquetParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        plan, index, count = ctx.parameters["plan"], int(ctx.parameters["index"]), int(ctx.parameters["count"])
        began = time.monotonic()
        with track_peak_rss() as rss, tempfile.TemporaryDirectory(prefix="geoetl-geoparquet-") as tmp:
            data, bounds, geometry, crs, extent = self._read(params, plan, ctx.parameters["cells"])
            read_seconds = time.monotonic() - began
            path = Path(tmp) / "part.parquet"
            name = part_blob(plan["output"], params.layout, ctx.job_id, index, count)
            # Blocks go up while pyarrow writes; the blob appears (or is replaced) only at commit.
            with self._storage.upload_while_written(
                params.output_container, name, path, content_type=MEDIA_TYPE
            ) as upload:
                summary = write_sorted(
                    path,
                    data,
                    geometry,
                    crs,
                    params.write_options(),
                    extent=extent,
                    order=params.spatial_ordering == "hilbert",
                    bounds=bounds,
                )
                del data, bounds
                uploaded = upload.commit()
            columns = arrow_columns(pq.read_schema(path), geometry)
        release_free_memory()  # glibc keeps freed arenas otherwise: a long-lived worker would ratchet up
        pa.default_memory_pool().release_unused()  # so does pyarrow's mimalloc (the part's tables)
        result = {"index": index, **uploaded.as_output(), **summary, "geometry_column": geometry, "columns": columns}
        result |= {
            "crs_wkt": crs.to_wkt() if crs is not None else None,
            "seconds": round(time.monotonic() - began, 3),
            "read_seconds": round(read_seconds, 3),
            "peak_rss_bytes": rss.peak_bytes,
            "start_rss_bytes": rss.start_bytes,  # the worker's RSS when the task began
            "process_id": os.getpid(),
        }
        return result | ({"plan": plan} if index == 0 else {})  # the assemble stage gets it from here

    def _read(
        self, params: ExportGeoParquetParameters, plan: dict[str, Any], cells: list[int]
    ) -> tuple[pa.Table, np.ndarray | None, str, CRS | None, tuple[float, float, float, float] | None]:
        """The part's rows, their bounds when known, the geometry column, the CRS and the extent the
        Hilbert keys are computed over (the whole table's: parts must agree)."""
        if plan["kind"] == "table":
            source = tables.TableSource.from_dict(plan["table"])
            with self._db.connection() as conn:
                data, bounds = tables.read_part(conn, source, cells, password=self._db.login_password())
            return data, bounds, source.geometry, source.crs(), source.extent
        local = self._blob_source(params)
        try:
            meta, data = pyogrio.read_arrow(local.path, layer=plan["layer"], **local.open_options)
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
            raise VectorInputError(f"{params.source_blob} cannot be read ({str(exc).splitlines()[0][:200]})") from exc
        geometry = str(meta.get("geometry_name") or "wkb")
        if geometry not in data.column_names:
            geometry = "wkb"
        if geometry == "wkb":
            data = data.rename_columns(["geometry" if n == "wkb" else n for n in data.column_names])
            geometry = "geometry"
        crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
        if crs is not None and (code := crs.to_epsg(min_confidence=100)):
            crs = CRS.from_epsg(code)
        return data, None, geometry, crs, None

    def assemble(self, ctx: TaskContext[ExportGeoParquetParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        plan, parts = ctx.parameters["plan"], ctx.parameters["parts"]
        output, container = plan["output"], params.output_container
        written = sum(int(p["rows"]) for p in parts)
        if plan["kind"] == "table" and written != int(plan["rows"]):
            raise PermanentTaskError(
                f"the parts hold {written} rows, the table held {plan['rows']} when planned: it changed during "
                "the export; submit again"
            )
        first = parts[0]
        crs = CRS.from_wkt(first["crs_wkt"]) if first["crs_wkt"] else None
        if crs is not None and (code := crs.to_epsg(min_confidence=100)):
            crs = CRS.from_epsg(code)
        extent = _union([p["bbox"] for p in parts])
        if params.layout == "dataset":
            files = list(parts)
            keep = {p["blob"] for p in parts}
            for blob in self._storage.list_blobs(container, output + "/"):
                if blob.name not in keep and blob.name.endswith(".parquet"):
                    self._storage.delete(container, blob.name)
        elif len(parts) == 1:
            files = [first]
        else:
            files = [self._concatenate(params, output, parts, crs)]
        base = output.rsplit("/", 1)[0] + "/" if "/" in output else ""
        assets = [
            ParquetAsset(
                key="data" if len(files) == 1 and params.layout == "file" else f"part-{int(f.get('index', 0)):05d}",
                href=f["blob"][len(base) :],
                size=int(f["bytes"]),
                sha256=f["sha256"],
            )
            for f in files
        ]
        item = build_item(
            item_id_for(output),
            assets=assets,
            columns=first["columns"],
            row_count=written,
            geometry_column=first["geometry_column"],
            extent=extent,
            crs=crs,
            when=datetime.now(UTC),
            description=f"GeoParquet export of {self._label(params)}",
        )
        item_name = item_blob(output)
        item_json = pystac_json(item)
        self._storage.upload_bytes(container, item_name, item_json, content_type="application/geo+json")
        return {
            "output": {"container": container, "blob": output, "layout": params.layout},
            "files": [{k: f[k] for k in ("container", "blob", "bytes", "sha256", "rows", "row_groups")} for f in files],
            "stac_item": {"container": container, "blob": item_name},
            "rows": written,
            "bbox": extent,
            "geometry_types": sorted({t for p in parts for t in p["geometry_types"]}),
        }

    def _concatenate(
        self, params: ExportGeoParquetParameters, output: str, parts: list[dict[str, Any]], crs: CRS | None
    ) -> dict[str, Any]:
        container = params.output_container
        with tempfile.TemporaryDirectory(prefix="geoetl-geoparquet-") as tmp:
            paths = []
            for part in parts:
                path = Path(tmp) / f"part-{int(part['index']):05d}.parquet"
                download(self._storage, container, part["blob"], path, int(part["bytes"]))
                paths.append(path)
            target = Path(tmp) / "out.parquet"
            summary = concatenate(target, paths, parts[0]["geometry_column"], crs, params.write_options())
            uploaded = self._storage.upload_file(container, output, target, content_type=MEDIA_TYPE)
        pa.default_memory_pool().release_unused()  # the row groups read, kept by pyarrow's mimalloc otherwise
        for part in parts:
            self._storage.delete(container, part["blob"])
        return {**uploaded.as_output(), **summary}

    def _label(self, params: ExportGeoParquetParameters) -> str:
        if params.table is not None:
            return f"table {self.schema_of(params)}.{params.table}"
        return f"{params.container}/{params.source_blob}"

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(
        self, stage: int, params: ExportGeoParquetParameters, previous_results: StageResults
    ) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(SOURCE_KEY)]
        if stage == 2:
            plan = dict(previous_results[SOURCE_KEY])
            parts = plan.pop("parts")
            return [
                TaskSpec(f"part_{i:05d}", {"plan": plan, "index": i, "count": len(parts), "cells": cells})
                for i, cells in enumerate(parts)
            ]
        writes = dict(previous_results)
        carried = writes[min(writes)].get("plan")
        return [TaskSpec(ASSEMBLE_KEY, assemble_parameters(carried or {}, writes))]

    def finalize(self, params: ExportGeoParquetParameters, outcome: JobOutcome) -> dict[str, Any]:
        assembled = outcome.results_by_stage.get("assemble", {}).get(ASSEMBLE_KEY, {})
        writes = list(outcome.results_by_stage.get("write", {}).values())
        return {
            "source": self._label(params),
            **assembled,
            "parts": len(writes),
            "peak_rss_bytes": max((int(w.get("peak_rss_bytes") or 0) for w in writes), default=0),
        }


def pystac_json(item: pystac.Item) -> bytes:
    return json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=1).encode()


def _union(boxes: list[list[float] | None]) -> list[float] | None:
    present = [b for b in boxes if b]
    if not present:
        return None
    return [
        min(b[0] for b in present),
        min(b[1] for b in present),
        max(b[2] for b in present),
        max(b[3] for b in present),
    ]
