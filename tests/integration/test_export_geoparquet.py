"""export_geoparquet end to end on real Azurite + Postgres/PostGIS: layers staged by stage_vector (or
tables made in SQL) exported through the engine, the outputs downloaded, checked by
geoparquet-validator and read back by geopandas / pyarrow, geometries compared to the source."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geoparquet_validator as gpv
import psycopg
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from pyproj import CRS

from controllers.export_geoparquet import ExportGeoParquetController
from controllers.registry import default_registry
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import RequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine import JobTypeRegistry, TaskContext
from tests.support import stac_schemas, vectors
from tests.support.engine import QueuePump, job_is_terminal, make_container, make_settings

pytestmark = pytest.mark.integration
GRID_ROWS = 50_000


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, vector_schema=f"g_{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def run_id() -> str:
    return secrets.token_hex(3)


def run_jobs(container: ServiceContainer, job_type: str, submissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    job_ids = [container.job_service.submit(job_type, params).job.job_id for params in submissions]
    pump = QueuePump(container, workers=2)
    try:
        pump.run_until(lambda: all(job_is_terminal(container, job_id)() for job_id in job_ids), timeout=180)
    finally:
        pump.close()
    return [container.job_service.job_status(job_id) for job_id in job_ids]


def execute(settings: Settings, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres_conninfo()) as conn:
        conn.execute("SET search_path TO public")
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def download(storage: BlobStorage, blob: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(storage.download_range("silver", blob))
    return target


def completed(status: dict[str, Any]) -> dict[str, Any]:
    assert status["status"] == "completed", status.get("error")
    return dict(status["result"])


def assert_valid(path: Path, *, all_good: bool) -> dict[str, Any]:
    """geoparquet-validator: no failed test, no "poor" advice; with ``all_good`` every advice "good"
    (otherwise only the single-row-group note on spatial order of a tiny file is tolerated)."""
    report = gpv.check(str(path))
    assert gpv.failed(report) == [], report["outcomes"]
    assert report["version"] == "1.1.0"
    levels = {a["topic"]: a["level"] for a in report["advice"]}
    assert "poor" not in levels.values(), report["advice"]
    if all_good:
        assert set(levels.values()) == {"good"}, report["advice"]
    else:
        others = {t for t, level in levels.items() if level != "good"}
        assert others <= {"spatial ordering"}, report["advice"]
        if others:  # not measurable below five row groups: nothing to order for a reader
            assert pq.ParquetFile(path).metadata.num_row_groups < 5, report["advice"]
    passed = {o["id"] for o in report["outcomes"] if o["status"] == "pass"}
    assert {"/conf/core/wkb", "/conf/core/crs-projjson", "/conf/covering/bbox-paths"} <= passed
    return report


def geometries_by_key(path: Path, key: str, geometry: str) -> dict[Any, bytes | None]:
    table = pq.read_table(path, columns=[key, geometry])
    return dict(zip(table.column(key).to_pylist(), table.column(geometry).to_pylist(), strict=True))


def source_geometries(settings: Settings, schema: str, table: str, key: str = "fid") -> dict[Any, bytes | None]:
    rows = execute(settings, f'SELECT "{key}", ST_AsBinary(geom) FROM "{schema}"."{table}"')
    return {k: (bytes(g) if g is not None else None) for k, g in rows}


@pytest.fixture(scope="module")
def staged(container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path_factory: pytest.TempPathFactory):
    """stage_vector loads the multi-layer GeoPackage and the custom-CRS FlatGeobuf."""
    files = tmp_path_factory.mktemp("sources")
    storage.ensure_container("silver")
    gpkg = f"gpq-{run_id}/survey.gpkg"
    storage.upload_file("bronze", gpkg, vectors.multi_layer_gpkg(files / "survey.gpkg"), content_type="x")
    fgb = f"gpq-{run_id}/lines.fgb"
    storage.upload_file("bronze", fgb, vectors.flatgeobuf_custom_crs(files / "lines.fgb"), content_type="x")
    txt = f"gpq-{run_id}/readme.txt"
    storage.upload_bytes("bronze", txt, b"not data", content_type="text/plain")
    statuses = run_jobs(container, "stage_vector", [{"blob_name": gpkg}, {"blob_name": fgb}])
    for status in statuses:
        completed(status)
    return {"gpkg": gpkg, "fgb": fgb, "txt": txt}


@pytest.fixture(scope="module")
def grid_table(settings: Settings, staged: dict[str, str]) -> str:
    """50 000 squares in random physical order, with unicode and reserved column names (quoted)."""
    schema = settings.vector_schema
    execute(
        settings,
        f"""CREATE TABLE "{schema}"."Grid Über" AS
            SELECT i AS id, 'n' || i AS "Größe", (i % 7)::smallint AS "select", i * 0.5 AS "order",
                   now()::date AS "día", ST_Buffer(ST_SetSRID(ST_MakePoint(2600000 + random() * 200000,
                   1200000 + random() * 100000), 2056), 10, 'quad_segs=1') AS geom
            FROM generate_series(1, {GRID_ROWS}) AS i ORDER BY random()""",
    )
    execute(settings, f'UPDATE "{schema}"."Grid Über" SET geom = NULL WHERE id = 7')
    execute(settings, f'CREATE TABLE "{schema}".plain (id int, label text)')
    return "Grid Über"


@pytest.fixture(scope="module")
def exports(
    container: ServiceContainer, staged: dict[str, str], grid_table: str, run_id: str
) -> Iterator[dict[str, dict[str, Any]]]:
    submissions: dict[str, dict[str, Any]] = {
        "parcels": {"table": "survey_parcels", "blob_name": f"gpq-{run_id}/parcels.parquet"},
        "lcc": {"table": "lines", "blob_name": f"gpq-{run_id}/lines.parquet"},
        "grid_file": {
            "table": grid_table,
            "blob_name": f"gpq-{run_id}/grid.parquet",
            "row_group_size": 5_000,
            "rows_per_part": 12_000,
        },
        "grid_dataset": {
            "table": grid_table,
            "blob_name": f"gpq-{run_id}/grid_ds.parquet",
            "row_group_size": 5_000,
            "rows_per_part": 20_000,
            "layout": "dataset",
        },
        "blob": {"source_blob": staged["gpkg"], "layer": "parcels", "blob_name": f"gpq-{run_id}/blob.parquet"},
        "unknown_table": {"table": "no_such_table"},
        "no_geometry": {"table": "plain"},
        "not_vector": {"source_blob": staged["txt"]},
    }
    statuses = run_jobs(container, "export_geoparquet", list(submissions.values()))
    yield dict(zip(submissions, statuses, strict=True))


def test_a_staged_layer_exports_to_valid_geoparquet(
    exports: dict[str, Any], storage: BlobStorage, settings: Settings, tmp_path: Path
) -> None:
    result = completed(exports["parcels"])
    assert result["rows"] == 4 and result["parts"] == 1
    path = download(storage, result["output"]["blob"], tmp_path / "parcels.parquet")
    assert_valid(path, all_good=False)
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    column = geo["columns"]["geom"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geom"
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["MultiPolygon"]
    assert CRS.from_json_dict(column["crs"]) == CRS.from_epsg(3857) and column["crs"]["id"]["code"] == 3857
    assert column["bbox"] == [0.0, 0.0, 500.0, 500.0]
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    expected = source_geometries(settings, settings.vector_schema, "survey_parcels")
    assert geometries_by_key(path, "fid", "geom") == expected
    assert None in expected.values()  # the NULL geometry survives as NULL
    frame = pytest.importorskip("geopandas").read_parquet(path)
    assert list(frame.columns[:3]) == ["fid", "name", "grosse"] and frame.crs == CRS.from_epsg(3857)
    by_fid = dict(zip(frame["fid"], frame.geometry, strict=True))
    for fid, wkb in expected.items():
        assert (by_fid[fid] is None) if wkb is None else shapely.equals_exact(by_fid[fid], shapely.from_wkb(wkb), 0)
    if "Parquet" in pyogrio.list_drivers():  # not in the pyogrio wheel's GDAL (3.12): see the report
        read = pyogrio.read_dataframe(path)
        assert len(read) == 4


def test_the_stac_item_describes_the_table(exports: dict[str, Any], storage: BlobStorage) -> None:
    result = completed(exports["parcels"])
    item = json.loads(storage.download_range("silver", result["stac_item"]["blob"]))
    assert result["stac_item"]["blob"].endswith("parcels.item.json")
    props = item["properties"]
    assert props["table:row_count"] == 4 and props["table:primary_geometry"] == "geom"
    names = [c["name"] for c in props["table:columns"]]
    assert names[:3] == ["fid", "name", "grosse"] and names[-1] == "bbox" and "geom" in names
    assert props["proj:code"] == "EPSG:3857" and props["proj:bbox"] == [0.0, 0.0, 500.0, 500.0]
    assert item["assets"]["data"]["href"] == "parcels.parquet"
    assert item["assets"]["data"]["file:size"] == result["files"][0]["bytes"]
    assert item["bbox"][0] == pytest.approx(0.0) and item["bbox"][2] == pytest.approx(500 / 111319.49, rel=1e-3)
    assert any("table" in uri for uri in item["stac_extensions"])
    errors = stac_schemas._schema_errors(item, stac_schemas.CORE_SCHEMAS["Feature"], stac_schemas._core_registry())
    for url in (stac_schemas.PROJECTION, stac_schemas.FILE):  # the official copies shipped in the repository
        errors += stac_schemas._schema_errors(item, url, stac_schemas._official_registry())
    assert errors == []


def test_a_crs_without_epsg_code_is_written_as_projjson(
    exports: dict[str, Any], storage: BlobStorage, settings: Settings, tmp_path: Path
) -> None:
    result = completed(exports["lcc"])
    path = download(storage, result["output"]["blob"], tmp_path / "lines.parquet")
    assert_valid(path, all_good=False)
    crs_json = json.loads(pq.read_schema(path).metadata[b"geo"])["columns"]["geom"]["crs"]
    assert crs_json["type"] == "ProjectedCRS" and "id" not in crs_json
    assert CRS.from_json_dict(crs_json).equals(CRS(vectors.CUSTOM_LCC), ignore_axis_order=True)
    assert geometries_by_key(path, "fid", "geom") == source_geometries(settings, settings.vector_schema, "lines")


def test_a_big_table_fans_out_and_is_assembled_into_one_ordered_file(
    exports: dict[str, Any], storage: BlobStorage, settings: Settings, tmp_path: Path
) -> None:
    result = completed(exports["grid_file"])
    assert result["parts"] >= 4 and result["rows"] == GRID_ROWS
    path = download(storage, result["output"]["blob"], tmp_path / "grid.parquet")
    report = assert_valid(path, all_good=True)
    assert "pass" in [o["status"] for o in report["outcomes"] if o["id"].endswith("spatial-order")]
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5_000] * 10
    schema = pq.read_schema(path)
    assert schema.names == ["id", "Größe", "select", "order", "día", "geom", "bbox"]
    assert geometries_by_key(path, "id", "geom") == source_geometries(
        settings, settings.vector_schema, "Grid Über", "id"
    )
    last = pq.read_table(path, columns=["id", "geom"]).slice(GRID_ROWS - 1)
    assert last.column("id").to_pylist() == [7] and last.column("geom").to_pylist() == [None]  # NULL sorts last
    leftovers = [b.name for b in storage.list_blobs("silver", result["output"]["blob"] + ".parts/")]
    assert leftovers == []


def test_the_dataset_layout_writes_valid_parts(
    exports: dict[str, Any], storage: BlobStorage, settings: Settings, tmp_path: Path
) -> None:
    result = completed(exports["grid_dataset"])
    prefix = result["output"]["blob"] + "/"
    names = sorted(b.name for b in storage.list_blobs("silver", prefix))
    assert names == sorted(f["blob"] for f in result["files"]) and len(names) == result["parts"] >= 2
    folder = tmp_path / "grid_ds.parquet"
    for name in names:
        assert_valid(download(storage, name, folder / name[len(prefix) :]), all_good=False)
    gpd = pytest.importorskip("geopandas")
    frame = gpd.read_parquet(folder)
    assert len(frame) == GRID_ROWS and frame.crs == CRS.from_epsg(2056)
    expected = source_geometries(settings, settings.vector_schema, "Grid Über", "id")
    assert {i: (None if g is None else g.wkb) for i, g in zip(frame["id"], frame.geometry, strict=True)} == expected
    item = json.loads(storage.download_range("silver", result["stac_item"]["blob"]))
    assert sorted(item["assets"]) == [f"part-{i:05d}" for i in range(len(names))]


def test_a_vector_blob_exports_with_its_column_names(
    exports: dict[str, Any], storage: BlobStorage, staged: dict[str, str], tmp_path: Path
) -> None:
    result = completed(exports["blob"])
    path = download(storage, result["output"]["blob"], tmp_path / "blob.parquet")
    assert_valid(path, all_good=False)
    schema = pq.read_schema(path)
    assert {"Name", "Größe", "select", "1st", "geom", "bbox"} <= set(schema.names)
    local = tmp_path / "survey.gpkg"
    local.write_bytes(storage.download_range("bronze", staged["gpkg"]))
    _, table = pyogrio.read_arrow(local, layer="parcels")
    source_wkb = sorted(v for v in table.column("geom").to_pylist() if v is not None)
    written = sorted(v for v in pq.read_table(path, columns=["geom"]).column("geom").to_pylist() if v is not None)
    assert written == source_wkb and len(written) == 3


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unknown_table", "does not exist"),
        ("no_geometry", "has no geometry column"),
        ("not_vector", "is not a supported vector file"),
    ],
)
def test_bad_input_fails_in_one_attempt_with_a_reason(
    exports: dict[str, Any], settings: Settings, name: str, reason: str
) -> None:
    status = exports[name]
    assert status["status"] == "failed"
    assert reason in str(status["error"]), status["error"]
    attempts = execute(
        settings, f"SELECT max(attempts) FROM {settings.postgres_schema}.tasks WHERE job_id = %s", (status["job_id"],)
    )
    assert attempts == [(1,)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"table": "a", "source_blob": "b.gpkg"}, None),
        ({"table": "a", "blob_name": "out.csv"}, "blob_name"),
        ({"table": "a", "compression": "lzma"}, "compression"),
        ({"table": "a", "row_group_size": 0}, "row_group_size"),
        ({"table": "a", "output_container": "azure-webjobs-hosts"}, "output_container"),
        ({"table": "a\x00"}, "table"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(
    container: ServiceContainer, body: dict[str, Any], field: str | None
) -> None:
    with pytest.raises(RequestError) as caught:
        container.job_service.submit("export_geoparquet", body)
    text = json.dumps(getattr(caught.value, "details", None) or str(caught.value))
    if field is not None:
        assert field in text, text


class FlakyWrite(ExportGeoParquetController):
    """Fails every write task's first attempt after its part was uploaded: the retry overwrites it."""

    def write(self, ctx: TaskContext[Any]) -> dict[str, Any]:
        result = super().write(ctx)
        if ctx.attempt == 1:
            raise ConnectionError("lost the connection after the upload (simulated)")
        return result


@pytest.fixture
def flaky_container(settings: Settings) -> Iterator[ServiceContainer]:
    probe = make_container(settings)
    regular = default_registry(settings, probe.blob_storage, probe.db)
    controllers = [c for c in regular.all() if c.job_type != "export_geoparquet"]
    flaky = FlakyWrite.from_settings(settings, probe.blob_storage, probe.db)
    services = make_container(settings, JobTypeRegistry([*controllers, flaky]))
    yield services
    services.close()
    probe.close()


def test_retried_write_tasks_overwrite_their_parts(
    flaky_container: ServiceContainer, grid_table: str, storage: BlobStorage, settings: Settings, run_id: str
) -> None:
    output = f"gpq-{run_id}/retried.parquet"
    params = {"table": grid_table, "blob_name": output, "row_group_size": 5_000, "rows_per_part": 20_000}
    [status] = run_jobs(flaky_container, "export_geoparquet", [{**params, "layout": "dataset"}])
    result = completed(status)
    assert result["rows"] == GRID_ROWS and result["parts"] >= 2
    assert sorted(b.name for b in storage.list_blobs("silver", output + "/")) == sorted(
        f["blob"] for f in result["files"]
    )
    attempts = execute(
        settings,
        f"SELECT min(attempts), max(attempts) FROM {settings.postgres_schema}.tasks WHERE job_id = %s AND stage = 2",
        (status["job_id"],),
    )
    assert attempts == [(2, 2)]


def test_the_adbc_reader_logs_in_with_the_password_a_new_connection_would_use(settings: Settings) -> None:
    """An Entra token expires while a pooled connection lives on: the ADBC reader takes the
    provider's current password (Database.login_password), not the pooled connection's."""
    from psycopg.conninfo import conninfo_to_dict

    from repositories.database import Database
    from services.vector.geoparquet_postgis import adbc_conninfo

    tokens = iter(["token-1", "token-2"])
    database = Database(settings.postgres_conninfo(), schema="geoetl", password_provider=lambda: next(tokens))
    assert database.login_password() == "token-1"
    assert database.login_password() == "token-2"
    assert Database(settings.postgres_conninfo(), schema="geoetl").login_password() is None

    with psycopg.connect(settings.postgres_conninfo(), password="pooled-password") as conn:
        fresh = conninfo_to_dict(adbc_conninfo(conn, "public", "token-3"))
        pooled = conninfo_to_dict(adbc_conninfo(conn, "my schema"))
    assert fresh["password"] == "token-3"
    assert pooled["password"] == "pooled-password"
    assert pooled["options"] == "-c search_path=my\\ schema"
