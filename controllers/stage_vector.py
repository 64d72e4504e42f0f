"""stage_vector: vector files in blob storage (GeoPackage, Shapefile, GeoJSON(Seq), FlatGeobuf, CSV)
→ PostGIS tables.

Stages (task keys in brackets):
1. inspect [source]       download the source (and sidecars) once per instance, list its layers, plan
                          each layer's table (laundered columns, types, geometry column, SRID), make
                          sure PostGIS and the target schema exist, and create one empty staging
                          table per layer. Bad input fails here, at once, with a one-line reason.
2. load [lNNN_pNNNNN]     fanned out from the plans: each layer is cut into feature ranges of
                          ``features_per_task``; each task COPYs its range into the layer's staging
                          table in one transaction, after deleting what an earlier attempt left, so a
                          retried task replaces and never duplicates.
3. swap [swap]            key and GIST indexes built side by side (two sessions), then one transaction
                          for every layer: attach the primary key, ANALYZE (unless ``analyze`` false), and the
                          staging table becomes the table (``if_exists``: fail / replace / append).
                          Readers see the old tables or the complete new ones.
Staging tables of a job that fails permanently are dropped by the task that fails it; ``prefix``
instead of ``blob_name`` loads every vector file under it (one table per file and layer).
Parameters and the pure fan-out / fan-in helpers: controllers/stage_vector_parameters.py.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from controllers.source_version import pin_source_etag
from controllers.stage_vector_parameters import (
    StageVectorParameters,
    feature_ranges,
    load_slices,
    swap_parameters,
    table_summary,
)
from controllers.vector_job import VectorJobController
from schemas.errors import PermanentTaskError
from services.engine import JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.raster.memory import release_free_memory, track_peak_rss
from services.vector import postgis
from services.vector.geometry import VectorInputError
from services.vector.loader import LayerPlan, LoadStats, load_range, plan_layer
from services.vector.names import default_table_name, launder, table_for_layer
from services.vector.source import LocalSource, is_vector_file, open_source

SOURCE_KEY, SWAP_KEY = "source", "swap"
# A load task copies a large range as two slices side by side, one connection and transaction each
# (both CPUs of an instance, without waiting for a second task's queue message). At most this many
# slices per process take an extra connection at a time; a task finding none free loads one slice.
_SPARE_SLICE_CONNECTIONS = threading.BoundedSemaphore(2)
STALE_STAGING_SECONDS = 24 * 3600  # staging tables older than this are swept by the next inspect


class StageVectorController(VectorJobController[StageVectorParameters]):
    job_type = "stage_vector"
    description = "Vector files (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, CSV) → PostGIS tables, loaded by COPY."
    parameters_model = StageVectorParameters

    def stage_definitions(self) -> tuple[StageDefinition, ...]:
        return (
            StageDefinition("inspect", self.inspect),
            StageDefinition("load", self.in_a_task_slot(self.load)),
            StageDefinition("swap", self.swap),
        )

    def schema_of(self, params: StageVectorParameters) -> str:
        return params.target_schema or self._default_schema

    # --- submission ---------------------------------------------------------------------------

    def resolve_parameters(self, params: StageVectorParameters) -> StageVectorParameters:
        """Record the source's etag (a replaced file is a new job); a caller's own must match (409)."""
        if params.blob_name is None:
            return params  # a prefix: each file's etag is recorded by the inspect stage
        current = pin_source_etag(self._storage, params.container, params.blob_name, params.source_etag)
        return params.model_copy(update={"source_etag": current})

    def _source(self, params: StageVectorParameters, blob_name: str, etag: str | None) -> LocalSource:
        """The local copy of ``blob_name``, which must still be version ``etag`` (when known)."""
        source = open_source(self._storage, params.container, blob_name, params.csv_options())
        if etag is not None and source.etag != etag:
            raise PermanentTaskError(
                f"{blob_name} changed after submission (etag {etag}, now {source.etag}); submit again"
            )
        return source

    def _blob_names(self, params: StageVectorParameters) -> list[str]:
        if params.blob_name is not None:
            return [params.blob_name]
        assert params.prefix is not None
        names = sorted(
            b.name for b in self._storage.list_blobs(params.container, params.prefix) if is_vector_file(b.name)
        )
        if not names:
            raise VectorInputError(f"no vector file under {params.container}/{params.prefix}")
        if len(names) > self._max_tasks:
            raise VectorInputError(f"{len(names)} vector files under {params.prefix} (at most {self._max_tasks})")
        return names

    # --- handlers -----------------------------------------------------------------------------

    def inspect(self, ctx: TaskContext[StageVectorParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        schema = self.schema_of(params)
        files: list[dict[str, Any]] = []
        phases = {"download": 0.0, "plan": 0.0}
        with self._db.connection() as conn:
            extension_schema = postgis.ensure_postgis(conn, schema)
            plans: list[LayerPlan] = []
            for name in self._blob_names(params):
                began = time.monotonic()
                source = self._source(params, name, params.source_etag if params.blob_name else None)
                downloaded = time.monotonic()
                phases["download"] += downloaded - began
                layers = self._layers(params, name, source)
                files.append({"blob": name, "driver": source.driver, "etag": source.etag, "layers": layers})
                plans += self._plans(conn, ctx.job_id, params, name, source, layers, extension_schema)
                phases["plan"] += time.monotonic() - downloaded
            if not plans:
                raise VectorInputError(f"no file under {params.source_label} has a layer {params.layer!r}")
            tables = [plan.table for plan in plans]
            duplicated = sorted({t for t in tables if tables.count(t) > 1})
            if duplicated:
                raise VectorInputError(f"several layers would go to the same table(s): {', '.join(duplicated)}")
            with conn.transaction():
                postgis.use_schemas(conn, schema, extension_schema)
                postgis.sweep_stale_staging(conn, schema, STALE_STAGING_SECONDS)
                for plan in plans:
                    if params.if_exists == "fail" and postgis.table_exists(conn, schema, plan.table):
                        raise VectorInputError(f"table {schema}.{plan.table} already exists (if_exists=fail)")
                    postgis.create_staging(conn, schema, plan.staging, plan.columns, plan.geometry)
        return {
            "schema": schema,
            "extension_schema": extension_schema,
            "files": files,
            "layers": [plan.to_dict() for plan in plans],
            "phase_seconds": {name: round(seconds, 3) for name, seconds in phases.items()},
        }

    @staticmethod
    def _layers(params: StageVectorParameters, name: str, source: LocalSource) -> list[str]:
        """The layers of one file to load (with ``layer``: that one; a file of a prefix without it: none)."""
        names = [layer for layer, _ in source.layers()]
        if not names:
            raise VectorInputError(f"{name} holds no layer")
        if params.layer is None:
            return names
        if params.layer in names:
            return [params.layer]
        if params.prefix is not None:
            return []
        raise VectorInputError(f"{name} has no layer {params.layer!r} (layers: {', '.join(names)})")

    def _plans(
        self,
        conn: psycopg.Connection[Any],
        job_id: str,
        params: StageVectorParameters,
        blob_name: str,
        source: LocalSource,
        layer_names: list[str],
        extension_schema: str,
    ) -> list[LayerPlan]:
        count = len(layer_names)
        plans = []
        for name in layer_names:
            table = default_table_name(blob_name, name, count)
            if params.table and params.prefix is not None:
                table = launder(f"{params.table}_{table}")
            elif params.table:
                table = table_for_layer(params.table, name, count)
            plans.append(
                plan_layer(
                    source,
                    name,
                    table=table,
                    staging=postgis.staging_table(job_id, table),
                    target_srid=params.target_srid,
                    srid_known=lambda srid: postgis.srid_known(conn, extension_schema, srid),
                    assume_srid=params.source_srid,
                    blob_name=blob_name,
                )
            )
        return plans

    def load(self, ctx: TaskContext[StageVectorParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        plan = LayerPlan.from_dict(ctx.parameters["plan"])
        schema, extension_schema = ctx.parameters["schema"], ctx.parameters["extension_schema"]
        start, stop = int(ctx.parameters["start"]), ctx.parameters.get("stop")
        began = time.monotonic()
        slices = load_slices(start, None if stop is None else int(stop), plan.feature_count)
        spare = len(slices) > 1 and _SPARE_SLICE_CONNECTIONS.acquire(blocking=False)
        if not spare:
            slices = [(start, None if stop is None else int(stop))]
        try:
            source = self._source(params, plan.blob_name, plan.etag or None)

            def load_slice(bounds: tuple[int, int | None]) -> LoadStats:
                with self._db.connection() as conn, conn.transaction():
                    postgis.use_schemas(conn, schema, extension_schema)
                    return load_range(
                        conn,
                        source,
                        plan,
                        schema=schema,
                        start=bounds[0],
                        stop=bounds[1],
                        policy=params.geometry_policy,
                        target_srid=params.target_srid,
                    )

            with track_peak_rss() as rss, ThreadPoolExecutor(len(slices)) as pool:
                stats = LoadStats.combined(list(pool.map(load_slice, slices)))
        except psycopg.errors.UndefinedTable as exc:
            raise PermanentTaskError(f"the staging table of {schema}.{plan.table} is gone (the job failed)") from exc
        except psycopg.DataError as exc:
            self._drop_staging(schema, ctx.parameters.get("staging_tables", [plan.staging]))
            first = (str(exc).strip().splitlines() or ["?"])[0][:300]
            raise VectorInputError(f"layer {plan.layer!r}: the database refused a value ({first})") from exc
        except PermanentTaskError:
            self._drop_staging(schema, ctx.parameters.get("staging_tables", [plan.staging]))
            raise
        finally:
            if spare:
                _SPARE_SLICE_CONNECTIONS.release()
            release_free_memory()  # glibc keeps freed batch buffers otherwise: the worker's RSS ratchets up
        result = {"layer": plan.layer, "table": plan.table, "start": start, "stop": stop, **stats.to_dict()}
        result |= {
            "slices": len(slices),
            "seconds": round(time.monotonic() - began, 3),
            "peak_rss_bytes": rss.peak_bytes,
            "process_id": os.getpid(),
        }
        carried = {"plan": plan.to_dict()} if start == 0 else {}  # the swap stage gets it from here
        return {**result, "schema": schema, "extension_schema": extension_schema, **carried}

    def swap(self, ctx: TaskContext[StageVectorParameters]) -> dict[str, Any]:
        params = ctx.job_parameters
        schema, extension_schema = ctx.parameters["schema"], ctx.parameters["extension_schema"]
        layers = ctx.parameters["layers"]
        swapped = []
        try:
            prepared = self._build_indexes(params, schema, layers)
            began = time.monotonic()
            with self._db.connection() as conn, conn.transaction():
                postgis.use_schemas(conn, schema, extension_schema)
                conn.execute("SET LOCAL lock_timeout = '60s'")
                for layer in layers:
                    plan = LayerPlan.from_dict(layer["plan"])
                    comment = {
                        "job_id": ctx.job_id,
                        "source": f"{params.container}/{plan.blob_name}",
                        "layer": plan.layer,
                        "source_crs_wkt": plan.source_crs_wkt,
                    }
                    outcome = postgis.swap_into_place(
                        conn,
                        schema=schema,
                        staging=plan.staging,
                        table=plan.table,
                        if_exists=params.if_exists,
                        geometry=plan.geometry is not None,
                        expected_rows=int(layer["written"]),
                        comment=comment,
                        scanned=_scanned(prepared.get(plan.table, {})),
                        analyze=params.analyze,
                    )
                    swapped.append({"layer": plan.layer, "table": plan.table, **outcome})
        except PermanentTaskError:
            self._drop_staging(schema, [LayerPlan.from_dict(layer["plan"]).staging for layer in layers])
            raise
        for entry in swapped:
            built = prepared.get(entry["table"], {})
            entry["index_seconds"] = {k: v for k, v in built.items() if k not in ("rows", "extent")}
        return {"tables": swapped, "swap_transaction_seconds": round(time.monotonic() - began, 3)}

    def _build_indexes(
        self, params: StageVectorParameters, schema: str, layers: list[dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """The staging tables' key and GIST indexes, built side by side before the swap (not for a
        table that will be appended to, whose rows go into the existing table's indexes)."""
        built = {}
        for layer in layers:
            plan = LayerPlan.from_dict(layer["plan"])
            if params.if_exists == "append":
                with self._db.connection() as conn:
                    if postgis.table_exists(conn, schema, plan.table):
                        continue
            built[plan.table] = postgis.build_indexes(
                self._db.connection, schema, plan.staging, plan.geometry is not None
            )
        return built

    def _drop_staging(self, schema: str, names: list[str]) -> None:
        """Best effort: a job failing for good leaves no staging table behind."""
        try:
            with self._db.connection() as conn, conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '10s'")
                postgis.drop_staging_tables(conn, schema, names)
        except Exception:  # the original error is what the job reports
            return

    # --- fan-out and fan-in -------------------------------------------------------------------

    def create_tasks(self, stage: int, params: StageVectorParameters, previous_results: StageResults) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(SOURCE_KEY)]
        if stage == 2:
            inspected = previous_results[SOURCE_KEY]
            layers = inspected["layers"]
            common = {
                "schema": inspected["schema"],
                "extension_schema": inspected["extension_schema"],
                "staging_tables": [layer["staging"] for layer in layers],  # dropped when a load fails for good
            }
            total = sum(max(1, int(layer["feature_count"])) for layer in layers)
            per_task = max(params.features_per_task, math.ceil(total / max(1, self._max_tasks - len(layers))))
            tasks = []
            for index, layer in enumerate(layers):
                for part, (start, stop) in enumerate(feature_ranges(int(layer["feature_count"]), per_task)):
                    parameters = {**common, "plan": layer, "start": start, "stop": stop}
                    tasks.append(TaskSpec(f"l{index:03d}_p{part:05d}", parameters))
            return tasks
        return [TaskSpec(SWAP_KEY, swap_parameters(previous_results))]

    def finalize(self, params: StageVectorParameters, outcome: JobOutcome) -> dict[str, Any]:
        inspected = outcome.results_by_stage.get("inspect", {}).get(SOURCE_KEY, {})
        loads = list(outcome.results_by_stage.get("load", {}).values())
        swapped = {t["table"]: t for t in outcome.results_by_stage.get("swap", {}).get(SWAP_KEY, {}).get("tables", [])}
        tables = [
            table_summary(
                inspected["schema"],
                layer,
                loads,
                swapped.get(layer["table"], {}).get("rows"),
                swapped.get(layer["table"], {}).get("extent"),
            )
            for layer in inspected.get("layers", [])
        ]
        return {
            "source": params.source_label,
            "files": inspected.get("files", []),
            "if_exists": params.if_exists,
            "geometry_policy": params.geometry_policy,
            "tables": tables,
        }


def _scanned(built: dict[str, Any]) -> tuple[int, list[float] | None] | None:
    """(rows, extent) of a staging table as build_indexes counted them; None: not counted."""
    return None if built.get("rows") is None else (int(built["rows"]), built.get("extent"))


__all__ = ["StageVectorController", "StageVectorParameters", "feature_ranges", "swap_parameters"]
