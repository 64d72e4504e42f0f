"""stage_vector on sources the first suite does not cover: curved geometries kept as curves, a
Shapefile whose extension and sidecars are upper / mixed case, and the ``unchecked`` geometry
policy (no GEOS read; extent from the database). Real Azurite + Postgres/PostGIS, real files."""

from __future__ import annotations

import secrets
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controllers import stage_vector_parameters
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.vector import postgis
from services.vector.geometry import GeometryColumn
from tests.integration.test_stage_vector import query, run_jobs, staging_tables, tables_by_name, upload
from tests.support import vectors
from tests.support.engine import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, vector_schema=f"v_{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def jobs(
    container: ServiceContainer, storage: BlobStorage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    files, run_id = tmp_path_factory.mktemp("sources"), secrets.token_hex(3)
    for part in vectors.shapefile_upper_case(files / "upper"):
        upload(storage, run_id, part, f"upper/{part.name}")
    submissions: dict[str, dict[str, Any]] = {
        "curves": {"blob_name": upload(storage, run_id, vectors.curves_gpkg(files / "arcs.gpkg"))},
        "upper_shp": {"blob_name": f"vec-{run_id}/upper/PARCELS.SHP"},
        "unchecked": {
            "blob_name": upload(storage, run_id, vectors.multi_layer_gpkg(files / "survey.gpkg")),
            "layer": "parcels",
            "geometry_policy": "unchecked",
        },
    }
    submissions["sliced"] = {
        "blob_name": upload(storage, run_id, vectors.points_gpkg(files / "sliced.gpkg", 1000)),
        "features_per_task": 600,
    }
    with pytest.MonkeyPatch.context() as patch:  # slices of 10+ features instead of 20 000+
        patch.setattr(stage_vector_parameters, "MIN_SLICE_FEATURES", 10)
        statuses = run_jobs(container, list(submissions.values()))
    return dict(zip(submissions, statuses, strict=True))


def test_curved_geometries_load_as_curves(jobs: dict[str, Any], settings: Settings) -> None:
    tables = tables_by_name(jobs["curves"])
    arcs, curves = tables["arcs_arcs"], tables["arcs_curves"]
    assert arcs["geometry_type"] == "geometry(Geometry, 2056)" and arcs["features_skipped"] == 0
    assert (arcs["features_written"], arcs["null_geometries"]) == (3, 1)
    assert arcs["extent"] == [0.0, -1.0, 2.0, 1.0]
    schema = settings.vector_schema
    rows = query(settings, f"SELECT ST_GeometryType(geom), ST_SRID(geom) FROM {schema}.arcs_arcs ORDER BY fid")
    assert rows == [("ST_CurvePolygon", 2056), ("ST_Polygon", 2056), (None, None)]
    kinds = query(
        settings, f"SELECT kind, ST_GeometryType(geom), ST_HasArc(geom) FROM {schema}.arcs_curves ORDER BY fid"
    )
    assert kinds == [(kind, f"ST_{kind}", True) for kind, _, _ in kinds]
    assert [k[0] for k in kinds] == ["CircularString", "CompoundCurve", "CurvePolygon", "MultiCurve", "MultiSurface"]
    assert curves["features_skipped"] == 0 and curves["extent"] is not None
    area = query(settings, f"SELECT ST_Area(geom) FROM {schema}.arcs_arcs WHERE fid = 0")[0][0]
    assert area == pytest.approx(3.14159, abs=0.01)  # a true circle of radius 1, not a linearized one


def test_an_upper_case_shapefile_finds_its_sidecars_in_any_case(jobs: dict[str, Any], settings: Settings) -> None:
    table = tables_by_name(jobs["upper_shp"])["parcels"]
    assert table["srid"] == 2056 and table["geometry_type"] == "geometry(MultiPolygon, 2056)"  # .PRJ read
    rows = query(settings, f"SELECT label, ST_NumGeometries(geom) FROM {settings.vector_schema}.parcels ORDER BY fid")
    assert rows == [("one", 1), ("two", 2)]  # .DBF read


def test_unchecked_loads_invalid_geometries_as_they_are(jobs: dict[str, Any], settings: Settings) -> None:
    table = tables_by_name(jobs["unchecked"])["survey"]
    assert (table["features_written"], table["made_valid"], table["features_skipped"]) == (4, 0, 0)
    assert table["extent"] == [0.0, 0.0, 500.0, 500.0]  # computed by the database
    valid = query(settings, f"SELECT ST_IsValid(geom) FROM {settings.vector_schema}.survey WHERE fid < 3 ORDER BY fid")
    assert valid == [(True,), (False,), (True,)]
    assert staging_tables(settings) == []


def test_a_load_task_copies_its_range_as_two_slices_side_by_side(
    jobs: dict[str, Any], settings: Settings, container: ServiceContainer
) -> None:
    table = tables_by_name(jobs["sliced"])["sliced"]
    assert table["load_tasks"] == 2 and table["features_written"] == 1000 and table["rows"] == 1000
    listed = container.job_service.list_tasks(jobs["sliced"]["job_id"], stage=2, status=None, limit=10, cursor=None)
    loads = listed["tasks"]
    assert sorted((t["result"]["start"], t["result"]["slices"]) for t in loads) == [(0, 2), (600, 2)]
    rows = query(
        settings, f"SELECT count(*), count(DISTINCT seq), min(fid), max(fid) FROM {settings.vector_schema}.sliced"
    )
    assert rows == [(1000, 1000, 0, 999)]
    assert query(settings, f"SELECT count(*) FROM {settings.vector_schema}.sliced WHERE fid <> seq") == [(0,)]


def test_a_source_of_unknown_case_is_still_refused_without_its_dbf(
    container: ServiceContainer, storage: BlobStorage, tmp_path: Path
) -> None:
    run_id = secrets.token_hex(3)
    for part in vectors.shapefile_upper_case(tmp_path / "partial"):
        if part.suffix != ".DBF":
            upload(storage, run_id, part, f"partial/{part.name}")
    [status] = run_jobs(container, [{"blob_name": f"vec-{run_id}/partial/PARCELS.SHP"}])
    assert status["status"] == "failed"
    assert "sidecar file(s) PARCELS.dbf are missing" in str(status["error"])


def test_indexes_built_beside_each_other_survive_a_retried_swap(settings: Settings) -> None:
    schema, staging = settings.vector_schema, postgis.staging_table("job-x", "built")
    column = GeometryColumn("MultiPolygon", False, 2056)

    def connect() -> AbstractContextManager[psycopg.Connection[Any]]:
        return psycopg.connect(settings.postgres_conninfo())

    with connect() as conn:
        extension_schema = postgis.ensure_postgis(conn, schema)
        with conn.transaction():
            postgis.use_schemas(conn, schema, extension_schema)
            postgis.create_staging(conn, schema, staging, [postgis.TableColumn("n", "integer", "int4")], column)
            conn.execute(
                f"INSERT INTO {schema}.{staging} SELECT i, i, ST_Multi(ST_MakeEnvelope(i, 0, i + 1, 1, 2056)) "
                "FROM generate_series(0, 99) AS i"
            )
    first = postgis.build_indexes(connect, schema, staging, True)
    again = postgis.build_indexes(connect, schema, staging, True)  # a retried swap task: nothing to build
    assert (first["rows"], first["extent"]) == (again["rows"], again["extent"]) == (100, [0.0, 0.0, 100.0, 1.0])
    swap: dict[str, Any] = {
        "schema": schema,
        "staging": staging,
        "table": "built",
        "if_exists": "replace",
        "geometry": True,
    }
    with connect() as conn, conn.transaction():
        postgis.use_schemas(conn, schema, extension_schema)
        outcome = postgis.swap_into_place(
            conn, **swap, expected_rows=100, comment={"job_id": "job-x"}, scanned=(100, again["extent"]), analyze=False
        )
    assert outcome == {"rows": 100, "already_swapped": False, "extent": [0.0, 0.0, 100.0, 1.0]}
    indexes = query(
        settings, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'built'", (schema,)
    )
    assert {name for name, _ in indexes} == {"built_pkey", "built_geom_gist"}
    assert query(settings, f"SELECT contype FROM pg_constraint WHERE conrelid = '{schema}.built'::regclass") == [("p",)]
    with connect() as conn, conn.transaction():  # the swap task retried after its commit
        postgis.use_schemas(conn, schema, extension_schema)
        assert postgis.build_indexes(connect, schema, staging, True)["rows"] is None
        repeated = postgis.swap_into_place(conn, **swap, expected_rows=100, comment={"job_id": "job-x"})
    assert repeated == {"rows": 100, "already_swapped": True}
