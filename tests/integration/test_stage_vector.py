"""stage_vector end to end on real Azurite + Postgres/PostGIS: small real files of every format made by
fixtures, uploaded to bronze, staged by real jobs through the engine, tables read back."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controllers.registry import default_registry
from controllers.stage_vector import StageVectorController
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine import JobTypeRegistry, TaskContext
from tests.support import vectors
from tests.support.engine import QueuePump, job_is_terminal, make_container, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, vector_schema=f"v_{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def run_id() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vectors")


def upload(storage: BlobStorage, run_id: str, path: Path, name: str | None = None) -> str:
    blob = f"vec-{run_id}/{name or path.name}"
    storage.upload_file("bronze", blob, path, content_type="application/octet-stream")
    return blob


def run_jobs(
    container: ServiceContainer, submissions: list[dict[str, Any]], timeout: float = 120
) -> list[dict[str, Any]]:
    job_ids = [container.job_service.submit("stage_vector", params).job.job_id for params in submissions]
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(lambda: all(job_is_terminal(container, job_id)() for job_id in job_ids), timeout=timeout)
    finally:
        pump.close()
    return [container.job_service.job_status(job_id) for job_id in job_ids]


def query(settings: Settings, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres_conninfo()) as conn:
        conn.execute("SET search_path TO public")
        return conn.execute(statement, params).fetchall()


def staging_tables(settings: Settings) -> list[str]:
    rows = query(
        settings,
        "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE '\\_geoetl\\_stage\\_%%'",
        (settings.vector_schema,),
    )
    return [r[0] for r in rows]


def tables_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert status["status"] == "completed", status.get("error")
    return {t["table"]: t for t in status["result"]["tables"]}


@pytest.fixture(scope="module")
def good_jobs(container: ServiceContainer, storage: BlobStorage, run_id: str, files: Path) -> dict[str, dict[str, Any]]:
    """Every good source staged in one batch of concurrent jobs: name → job status."""
    upload(storage, run_id, vectors.geojson_mixed(files / "first.geojson"), "batch/first.geojson")
    upload(storage, run_id, vectors.points_gpkg(files / "second.gpkg", 7), "batch/second.gpkg")
    (files / "readme.txt").write_text("not data")
    upload(storage, run_id, files / "readme.txt", "batch/readme.txt")
    shp_parts = vectors.shapefile(files / "loose")
    for part in shp_parts:
        upload(storage, run_id, part, f"loose/{part.name}")
    submissions: dict[str, dict[str, Any]] = {
        "gpkg": {"blob_name": upload(storage, run_id, vectors.multi_layer_gpkg(files / "survey.gpkg"))},
        "gpkg_skip": {
            "blob_name": f"vec-{run_id}/survey.gpkg",
            "layer": "parcels",
            "table": "parcels_skip",
            "geometry_policy": "skip",
        },
        "gpkg_reprojected": {
            "blob_name": f"vec-{run_id}/survey.gpkg",
            "layer": "wells",
            "table": "wells_3857",
            "target_srid": 3857,
        },
        "zip_shp": {"blob_name": upload(storage, run_id, vectors.zipped_shapefile(files / "z", files / "roads.zip"))},
        "loose_shp": {"blob_name": f"vec-{run_id}/loose/roads.shp", "table": "roads_loose"},
        "geojson": {"blob_name": upload(storage, run_id, vectors.geojson_mixed(files / "mixed.geojson"))},
        "geojsonseq": {"blob_name": upload(storage, run_id, vectors.geojsonseq_3d(files / "wells3d.geojsonl"))},
        "fgb": {"blob_name": upload(storage, run_id, vectors.flatgeobuf_custom_crs(files / "lines.fgb"))},
        "no_crs": {"blob_name": upload(storage, run_id, vectors.gpkg_without_crs(files / "nocrs.gpkg"))},
        "csv_wkt": {"blob_name": upload(storage, run_id, vectors.csv_wkt(files / "shapes.csv"))},
        "csv_lonlat": {
            "blob_name": upload(storage, run_id, vectors.csv_lonlat(files / "stations.csv")),
            "source_srid": 4326,
        },
        "prefix": {"prefix": f"vec-{run_id}/batch/", "table": "batch"},
        "fanned_out": {
            "blob_name": upload(storage, run_id, vectors.points_gpkg(files / "many.gpkg", 2500)),
            "features_per_task": 1000,
        },
    }
    statuses = run_jobs(container, list(submissions.values()))
    return dict(zip(submissions, statuses, strict=True))


def test_a_multi_layer_geopackage_becomes_one_table_per_layer(good_jobs: dict[str, Any], settings: Settings) -> None:
    tables = tables_by_name(good_jobs["gpkg"])
    assert set(tables) == {"survey_parcels", "survey_wells"}
    parcels = tables["survey_parcels"]
    assert (parcels["features_read"], parcels["features_written"], parcels["features_skipped"]) == (4, 4, 0)
    assert parcels["made_valid"] == 1 and parcels["null_geometries"] == 1
    assert parcels["srid"] == 3857 and parcels["geometry_type"] == "geometry(MultiPolygon, 3857)"
    assert parcels["extent"] == [0.0, 0.0, 500.0, 500.0]
    mapping = {c["source"]: (c["name"], c["type"]) for c in parcels["columns"]}
    assert mapping == {
        "Name": ("name", "text"),
        "Größe": ("grosse", "integer"),
        "select": ("select_", "text"),
        "user": ("user_", "text"),
        "count": ("count", "bigint"),
        "ratio": ("ratio", "double precision"),
        "active": ("active", "boolean"),
        "surveyed": ("surveyed", "date"),
        "updated": ("updated", mapping["updated"][1]),
        "1st": ("_1st", "text"),
    }
    assert mapping["updated"][1] in {"timestamp", "timestamptz"}
    schema = settings.vector_schema
    rows = query(
        settings,
        f"SELECT fid, name, grosse, select_, count, active, surveyed, ST_GeometryType(geom), ST_IsValid(geom), "
        f"ST_SRID(geom) FROM {schema}.survey_parcels ORDER BY fid",
    )
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert rows[0][1:7] == ("alpha", 1, "s1", 10**10, True, rows[0][6])
    assert str(rows[0][6]) == "2024-01-02"
    assert [r[7] for r in rows[:3]] == ["ST_MultiPolygon"] * 3 and rows[3][7] is None
    assert all(r[8] for r in rows[:3]) and {r[9] for r in rows[:3]} == {3857}
    wells = tables["survey_wells"]
    assert wells["geometry_type"] == "geometry(PointZ, 4326)"
    assert query(settings, f"SELECT ST_Z(geom) FROM {schema}.survey_wells ORDER BY fid") == [(500.0,), (600.0,)]
    indexes = {r[0] for r in query(settings, "SELECT indexdef FROM pg_indexes WHERE tablename = 'survey_parcels'")}
    assert any("USING gist (geom)" in d for d in indexes) and any("(fid)" in d for d in indexes)
    assert staging_tables(settings) == []


def test_invalid_geometries_skipped_with_the_reason(good_jobs: dict[str, Any]) -> None:
    parcels = tables_by_name(good_jobs["gpkg_skip"])["parcels_skip"]
    assert (parcels["features_read"], parcels["features_written"], parcels["features_skipped"]) == (4, 3, 1)
    assert parcels["skipped_reasons"] == {"invalid geometry: Self-intersection": 1}


def test_reprojected_when_a_target_srid_is_given(good_jobs: dict[str, Any], settings: Settings) -> None:
    wells = tables_by_name(good_jobs["gpkg_reprojected"])["wells_3857"]
    assert wells["srid"] == 3857 and wells["source_srid"] == 4326
    x, srid = query(
        settings, f"SELECT ST_X(geom), ST_SRID(geom) FROM {settings.vector_schema}.wells_3857 ORDER BY fid"
    )[0]
    assert srid == 3857 and x == pytest.approx(779236.4, abs=1)


@pytest.mark.parametrize("job, table", [("zip_shp", "roads"), ("loose_shp", "roads_loose")])
def test_shapefiles_zipped_or_with_sidecars_promote_to_multi(
    good_jobs: dict[str, Any], settings: Settings, job: str, table: str
) -> None:
    result = tables_by_name(good_jobs[job])[table]
    assert result["srid"] == 2056 and result["geometry_type"] == "geometry(MultiPolygon, 2056)"
    rows = query(settings, f"SELECT label, ST_NumGeometries(geom) FROM {settings.vector_schema}.{table} ORDER BY fid")
    assert rows == [("one", 1), ("two", 2)]


def test_geojson_mixed_types_and_json_properties(good_jobs: dict[str, Any], settings: Settings) -> None:
    result = tables_by_name(good_jobs["geojson"])["mixed"]
    assert result["features_written"] == 3 and result["null_geometries"] == 1 and result["srid"] == 4326
    rows = query(settings, f"SELECT kind, tags, ST_GeometryType(geom) FROM {settings.vector_schema}.mixed ORDER BY fid")
    assert rows[0] == ("a", {"x": 1}, "ST_Polygon") and rows[1][2] == "ST_MultiPolygon" and rows[2][2] is None


def test_geojsonseq_keeps_z(good_jobs: dict[str, Any], settings: Settings) -> None:
    result = tables_by_name(good_jobs["geojsonseq"])["wells3d"]
    assert result["geometry_type"] == "geometry(PointZ, 4326)" and result["features_written"] == 5
    assert query(settings, f"SELECT max(ST_Z(geom)) FROM {settings.vector_schema}.wells3d") == [(40.0,)]


def test_a_crs_without_epsg_code_is_recorded_as_wkt(good_jobs: dict[str, Any], settings: Settings) -> None:
    result = tables_by_name(good_jobs["fgb"])["lines"]
    assert result["srid"] == 0 and result["source_srid"] == 0
    assert result["source_crs_wkt"].startswith("PROJCRS") and "Lambert" in result["source_crs_wkt"]
    assert result["geometry_type"] == "geometry(MultiLineString, 0)"
    comment = query(settings, f"SELECT obj_description('{settings.vector_schema}.lines'::regclass)")[0][0]
    assert "PROJCRS" in comment


def test_no_crs_loads_with_srid_0(good_jobs: dict[str, Any]) -> None:
    result = tables_by_name(good_jobs["no_crs"])["nocrs"]
    assert result["srid"] == 0 and result["source_srid"] == 0 and result["source_crs_wkt"] is None


def test_csv_with_wkt_or_lon_lat(good_jobs: dict[str, Any], settings: Settings) -> None:
    shapes = tables_by_name(good_jobs["csv_wkt"])["shapes"]
    assert shapes["features_written"] == 3 and [c["name"] for c in shapes["columns"]] == ["id", "name"]
    stations = tables_by_name(good_jobs["csv_lonlat"])["stations"]
    assert stations["srid"] == 4326 and stations["geometry_type"] == "geometry(Point, 4326)"
    rows = query(settings, f"SELECT station, temp, ST_X(geom) FROM {settings.vector_schema}.stations ORDER BY fid")
    assert rows == [("A", 12.5, 7.1), ("B", 9.75, 8.2), ("C", None, 6.5)]


def test_a_prefix_loads_every_vector_file_under_it(good_jobs: dict[str, Any], settings: Settings, run_id: str) -> None:
    status = good_jobs["prefix"]
    tables = tables_by_name(status)
    assert set(tables) == {"batch_first", "batch_second"}
    assert tables["batch_first"]["source"] == f"vec-{run_id}/batch/first.geojson"
    assert tables["batch_second"]["rows"] == 7
    assert [f["blob"].rsplit("/", 1)[-1] for f in status["result"]["files"]] == ["first.geojson", "second.gpkg"]


def test_big_layers_fan_out_into_feature_ranges(good_jobs: dict[str, Any], settings: Settings) -> None:
    result = tables_by_name(good_jobs["fanned_out"])["many"]
    assert result["load_tasks"] == 3 and result["features_written"] == 2500
    assert query(
        settings, f"SELECT count(*), count(DISTINCT seq), min(fid), max(fid) FROM {settings.vector_schema}.many"
    ) == [(2500, 2500, 0, 2499)]


@pytest.fixture(scope="module")
def bad_jobs(container: ServiceContainer, storage: BlobStorage, run_id: str, files: Path) -> dict[str, dict[str, Any]]:
    junk = files / "junk.gpkg"
    junk.write_bytes(b"this is not a GeoPackage\n" * 100)
    parts = {p.suffix: p for p in vectors.shapefile(files / "partial", "partial")}
    upload(storage, run_id, parts[".shp"], "partial/partial.shp")
    upload(storage, run_id, parts[".shx"], "partial/partial.shx")
    submissions = {
        "junk": {"blob_name": upload(storage, run_id, junk)},
        "missing_sidecar": {"blob_name": f"vec-{run_id}/partial/partial.shp"},
        "zip_bomb": {"blob_name": upload(storage, run_id, vectors.zip_bomb(files / "bomb.zip"))},
        "unsupported": {"blob_name": upload(storage, run_id, junk, "notes.txt")},
        "invalid_fails": {
            "blob_name": upload(storage, run_id, vectors.multi_layer_gpkg(files / "strict.gpkg")),
            "geometry_policy": "fail",
            "layer": "parcels",
        },
        "invalid_fails_every_layer": {"blob_name": f"vec-{run_id}/strict.gpkg", "geometry_policy": "fail"},
    }
    statuses = run_jobs(container, list(submissions.values()))
    return dict(zip(submissions, statuses, strict=True))


@pytest.mark.parametrize(
    "name, reason",
    [
        ("junk", "not a readable GPKG file"),
        ("missing_sidecar", "sidecar file(s) partial.dbf are missing"),
        ("zip_bomb", "possible zip bomb"),
        ("unsupported", "is not a supported vector file"),
        ("invalid_fails", "has an invalid geometry: Self-intersection"),
        ("invalid_fails_every_layer", "has an invalid geometry: Self-intersection"),
    ],
)
def test_bad_input_fails_in_one_attempt_with_a_reason(
    bad_jobs: dict[str, Any], container: ServiceContainer, settings: Settings, name: str, reason: str
) -> None:
    status = bad_jobs[name]
    assert status["status"] == "failed"
    assert reason in str(status["error"]), status["error"]
    job_id = status["job_id"]
    attempts = query(
        settings, f"SELECT max(attempts) FROM {settings.postgres_schema}.tasks WHERE job_id = %s", (job_id,)
    )
    assert attempts == [(1,)]
    assert staging_tables(settings) == []


def test_if_exists_fail_replace_append(
    container: ServiceContainer, storage: BlobStorage, settings: Settings, run_id: str, files: Path
) -> None:
    stale = f"{settings.vector_schema}._geoetl_stage_left_by_a_dead_job"
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {settings.vector_schema}")
        conn.execute(f"CREATE TABLE {stale} (fid bigint)")
        conn.execute(f"""COMMENT ON TABLE {stale} IS '{{"staging_created": 0}}'""")
    blob = upload(storage, run_id, vectors.points_gpkg(files / "again.gpkg", 10))
    base = {"blob_name": blob, "table": "again"}
    [first] = run_jobs(container, [base])
    assert tables_by_name(first)["again"]["rows"] == 10
    assert staging_tables(settings) == []  # the stale one was swept by the inspect stage
    fail, replace = run_jobs(
        container, [{**base, "features_per_task": 5}, {**base, "if_exists": "replace", "table": "again"}]
    )
    assert fail["status"] == "failed" and "already exists (if_exists=fail)" in str(fail["error"])
    assert tables_by_name(replace)["again"]["rows"] == 10
    [append] = run_jobs(container, [{**base, "if_exists": "append"}])
    assert tables_by_name(append)["again"]["features_written"] == 10
    counts = query(settings, f"SELECT count(*), count(DISTINCT fid) FROM {settings.vector_schema}.again")
    assert counts == [(20, 20)]


class FlakyLoad(StageVectorController):
    """Fails every load task's first attempt after its COPY committed: the retry must not duplicate."""

    def load(self, ctx: TaskContext[Any]) -> dict[str, Any]:
        result = super().load(ctx)
        if ctx.attempt == 1:
            raise ConnectionError("lost the connection after commit (simulated)")
        return result


@pytest.fixture
def flaky_container(settings: Settings) -> Iterator[ServiceContainer]:
    probe = make_container(settings)
    regular = default_registry(settings, probe.blob_storage, probe.db)
    controllers = [c for c in regular.all() if c.job_type != "stage_vector"]
    flaky = FlakyLoad.from_settings(settings, probe.blob_storage, probe.db)
    services = make_container(settings, JobTypeRegistry([*controllers, flaky]))
    yield services
    services.close()
    probe.close()


def test_a_retried_load_task_produces_no_duplicates(
    flaky_container: ServiceContainer, storage: BlobStorage, settings: Settings, run_id: str, files: Path
) -> None:
    blob = upload(storage, run_id, vectors.points_gpkg(files / "retried.gpkg", 1200))
    [status] = run_jobs(flaky_container, [{"blob_name": blob, "features_per_task": 500}])
    result = tables_by_name(status)["retried"]
    assert result["features_written"] == 1200 and result["load_tasks"] == 3
    counts = query(settings, f"SELECT count(*), count(DISTINCT fid) FROM {settings.vector_schema}.retried")
    assert counts == [(1200, 1200)]
    attempts = query(
        settings,
        f"SELECT key_attempts FROM (SELECT max(attempts) AS key_attempts FROM {settings.postgres_schema}.tasks "
        "WHERE job_id = %s AND stage = 2) t",
        (status["job_id"],),
    )
    assert attempts == [(2,)]


def test_vectorised_copy_encodes_every_type_like_postgres_reads_it(settings: Settings) -> None:
    import datetime as dt

    import pyarrow as pa

    from services.vector.copy_binary import SIGNATURE, TRAILER, encode_rows

    columns = [
        pa.array([1, None, -(2**40)], pa.int64()),
        pa.array([7, 8, None], pa.uint8()),
        pa.array([2**31 - 1, None, -5], pa.int32()),
        pa.array([1.5, None, -0.25], pa.float32()),
        pa.array([True, False, None]),
        pa.array([dt.date(1999, 12, 31), None, dt.date(2024, 2, 29)]),
        pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 600000), None, dt.datetime(1970, 1, 1)], pa.timestamp("ms")),
        pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None, None], pa.timestamp("us", tz="+02:00")),
        pa.array([dt.time(12, 30, 1), None, dt.time(0, 0)], pa.time64("us")),
        pa.array(["héllo", None, "a\x00b"]),
        pa.array([b"\x00\x01", None, b""], pa.binary()),
    ]
    types = ["int8", "int2", "int4", "float4", "bool", "date", "timestamp", "timestamptz", "time", "text", "bytea"]
    sql_types = [
        "bigint",
        "smallint",
        "integer",
        "real",
        "boolean",
        "date",
        "timestamp",
        "timestamptz",
        "time",
        "text",
        "bytea",
    ]
    with psycopg.connect(settings.postgres_conninfo()) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        definition = ", ".join(f"c{i} {t}" for i, t in enumerate(sql_types))
        conn.execute(f"CREATE TEMP TABLE everything ({definition})")
        with conn.cursor() as cur, cur.copy("COPY everything FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(SIGNATURE + encode_rows(columns, types) + TRAILER)
        rows = conn.execute("SELECT * FROM everything").fetchall()
    expected = list(zip(*(c.to_pylist() for c in columns), strict=True))
    assert rows[0][:6] == expected[0][:6] and rows[1][:6] == expected[1][:6]
    assert rows[0][6] == dt.datetime(2024, 1, 2, 3, 4, 5, 600000)
    assert rows[0][7] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert rows[0][8:] == (dt.time(12, 30, 1), "héllo", b"\x00\x01")
    assert rows[1] == (None, 8, None, None, False, *(None,) * 6)
    assert rows[2][9:] == ("ab", b"") and rows[2][5] == dt.date(2024, 2, 29) and rows[2][6] == dt.datetime(1970, 1, 1)
