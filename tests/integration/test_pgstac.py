"""pgstac on real Postgres (PostGIS) + Azurite: the migration, ingest_stac's modes and retries, and
process_raster with ``pgstac: true``."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import psycopg
import pytest

from controllers.ingest_stac import IngestStacController
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from repositories.pgstac_migrator import PYPGSTAC_VERSION, apply_pgstac_migrations
from schemas.errors import InvalidRequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine import TaskContext
from tests.support import rasters
from tests.support.engine import make_container, make_settings, pump_until_terminal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    settings = make_settings(azurite_connection_string, postgres_database, pgstac_enabled=True)
    apply_pgstac_migrations(settings.postgres_conninfo())
    return settings


@pytest.fixture(scope="module")
def storage(settings: Settings) -> BlobStorage:
    blobs = BlobStorage(settings.storage_connection_string.get_secret_value())
    blobs.ensure_container("bronze")
    blobs.ensure_container("silver")
    return blobs


def pgstac(settings: Settings, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres_conninfo()) as conn:
        return conn.execute(statement, params).fetchall()


def collection_doc(collection_id: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "description": "test collection",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[0, 0, 10, 10]]},
            "temporal": {"interval": [["2021-01-01T00:00:00Z", None]]},
        },
        "links": [{"rel": "root", "href": "./collection.json"}, {"rel": "item", "href": "./i0/i0.json"}],
    }


def item_doc(collection_id: str, index: int, title: str = "v1") -> dict[str, Any]:
    x = index % 10
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"{collection_id}-i{index}",
        "collection": collection_id,
        "geometry": {"type": "Point", "coordinates": [x, x]},
        "bbox": [x, x, x, x],
        "properties": {"datetime": f"2021-01-{1 + index % 28:02d}T00:00:00Z", "title": title},
        "assets": {"data": {"href": f"../data/{index}.tif", "type": "image/tiff"}},
        "links": [{"rel": "self", "href": "./x.json"}, {"rel": "license", "href": "https://example.com/l"}],
    }


def upload_catalog(storage: BlobStorage, prefix: str, collection_id: str, count: int, title: str = "v1") -> None:
    def put(name: str, doc: Any) -> None:
        storage.upload_bytes("silver", f"{prefix}/{name}", json.dumps(doc).encode(), content_type="application/json")

    put("collection.json", collection_doc(collection_id))
    put("catalog.json", {"type": "Catalog", "id": "c", "description": "d", "stac_version": "1.1.0", "links": []})
    for index in range(count - 2):
        put(f"items/i{index}.json", item_doc(collection_id, index, title))
    lines = "\n".join(json.dumps(item_doc(collection_id, i, title)) for i in (count - 2, count - 1))
    storage.upload_bytes("silver", f"{prefix}/items/last.ndjson", lines.encode(), content_type="application/json")


def ingest(container: ServiceContainer, **params: Any) -> dict[str, Any]:
    job = container.job_service.submit("ingest_stac", params).job
    return pump_until_terminal(container, job.job_id, timeout=90)


def items_of(settings: Settings, collection_id: str) -> dict[str, dict[str, Any]]:
    rows = pgstac(
        settings, "SELECT id, pgstac.get_item(id, collection) FROM pgstac.items WHERE collection = %s", (collection_id,)
    )
    return {row[0]: row[1] for row in rows}


def test_pgstac_is_migrated_idempotently_and_reported_by_health(
    settings: Settings, container: ServiceContainer
) -> None:
    assert apply_pgstac_migrations(settings.postgres_conninfo()) == PYPGSTAC_VERSION == "0.10.0"
    roles = {r[0] for r in pgstac(settings, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgstac%'")}
    assert {"pgstac_admin", "pgstac_read", "pgstac_ingest"} <= roles
    assert {"postgis", "btree_gist"} <= {r[0] for r in pgstac(settings, "SELECT extname FROM pg_extension")}
    _, report = container.health.readiness()
    assert report["dependencies"]["pgstac"] == {**report["dependencies"]["pgstac"], "status": "ok", "version": "0.10.0"}


def test_ingest_stac_loads_collections_first_then_item_chunks(
    settings: Settings, container: ServiceContainer, storage: BlobStorage
) -> None:
    cid, prefix = f"ing-{secrets.token_hex(3)}", f"stac-src/{secrets.token_hex(3)}"
    upload_catalog(storage, prefix, cid, 12)
    status = ingest(container, prefix=prefix, mode="insert", chunk_size=4)
    assert status["status"] == "completed", status
    result = status["result"]
    assert (result["collections"], result["items"], result["item_blobs"]) == (
        1,
        12,
        12,
    )  # 10 item files, one .ndjson of 2, catalog.json
    assert result["skipped"] == 1  # catalog.json is not an item
    loaded = items_of(settings, cid)
    assert len(loaded) == 12
    one = loaded[f"{cid}-i0"]
    assert one["assets"]["data"]["href"].startswith("http") and one["assets"]["data"]["href"].endswith("/data/0.tif")
    assert [link["rel"] for link in one.get("links", [])] == ["license"]  # structural links dropped


def test_modes_ignore_upsert_delsert_and_insert_conflict(
    settings: Settings, container: ServiceContainer, storage: BlobStorage
) -> None:
    cid, prefix = f"mode-{secrets.token_hex(3)}", f"stac-src/{secrets.token_hex(3)}"
    upload_catalog(storage, prefix, cid, 5, title="v1")
    assert ingest(container, prefix=prefix, mode="insert")["status"] == "completed"
    upload_catalog(storage, prefix, cid, 5, title="v2")
    assert ingest(container, prefix=prefix, mode="ignore")["status"] == "completed"
    assert {i["properties"]["title"] for i in items_of(settings, cid).values()} == {"v1"}
    assert ingest(container, prefix=prefix, mode="upsert")["status"] == "completed"
    assert {i["properties"]["title"] for i in items_of(settings, cid).values()} == {"v2"}
    upload_catalog(storage, prefix, cid, 5, title="v3")
    assert ingest(container, prefix=prefix, mode="delsert")["status"] == "completed"
    assert {i["properties"]["title"] for i in items_of(settings, cid).values()} == {"v3"}
    failed = ingest(container, prefix=prefix, mode="insert", chunk_size=2)
    assert failed["status"] == "failed"
    assert "mode is insert" in json.dumps(failed)


def test_a_retried_chunk_whose_load_committed_loads_nothing_again(
    settings: Settings, container: ServiceContainer, storage: BlobStorage
) -> None:
    cid, prefix = f"retry-{secrets.token_hex(3)}", f"stac-src/{secrets.token_hex(3)}"
    upload_catalog(storage, prefix, cid, 6)
    status = ingest(container, prefix=prefix, mode="insert", chunk_size=3)
    assert status["status"] == "completed"
    controller = container.registry.get("ingest_stac")
    assert isinstance(controller, IngestStacController)
    params = controller.parse_parameters({"prefix": prefix, "mode": "insert", "chunk_size": 3})
    reloaded = 0
    for key in ("chunk_00000", "chunk_00001"):
        ctx = TaskContext(
            job_id=status["job_id"],
            task_id=f"{status['job_id']}-s3-{key}",
            stage=3,
            task_key=key,
            attempt=2,
            parameters={},
            job_parameters=params,
            predecessor_result=None,
            logger=logging.LoggerAdapter(logging.getLogger("test")),
        )
        reloaded += controller.items(ctx)["loaded"]  # insert mode: would fail on its own rows if it loaded again
    assert reloaded == 6  # what the chunks recorded, nothing loaded twice
    assert len(items_of(settings, cid)) == 6


def test_ingest_stac_parameters_need_one_source(container: ServiceContainer) -> None:
    with pytest.raises(InvalidRequestError):
        container.job_service.submit("ingest_stac", {"mode": "upsert"})
    with pytest.raises(InvalidRequestError):
        container.job_service.submit("ingest_stac", {"prefix": "a", "catalog": "b/collection.json"})


def test_process_raster_with_pgstac_true_puts_its_items_in_pgstac_and_ingest_stac_walks_its_catalog(
    settings: Settings, container: ServiceContainer, storage: BlobStorage, tmp_path: Any
) -> None:
    blob = f"pg-{secrets.token_hex(3)}/rgb.tif"
    storage.upload_file("bronze", blob, rasters.uint8_rgb(tmp_path / "rgb.tif"), content_type="image/tiff")
    job = container.job_service.submit("process_raster", {"blob_name": blob, "pgstac": True}).job
    status = pump_until_terminal(container, job.job_id, timeout=120)
    assert status["status"] == "completed", status
    outputs = status["result"]["outputs"]
    cid = outputs["pgstac"]["collection"]
    loaded = items_of(settings, cid)
    assert len(loaded) == outputs["pgstac"]["items"] == len(outputs["stac_items"]) >= 1
    for item in loaded.values():
        href = item["assets"][next(iter(item["assets"]))]["href"]
        assert href.startswith("http") and "/silver/" in href and ".." not in href
    assert pgstac(settings, "SELECT count(*) FROM pgstac.collections WHERE id = %s", (cid,)) == [(1,)]
    # The same catalog through ingest_stac's catalog walk: upsert changes nothing.
    again = ingest(container, catalog=outputs["stac_collection"]["blob"], mode="upsert")
    assert again["status"] == "completed", again
    assert again["result"]["items"] == len(loaded) and again["result"]["collections"] == 1
    assert set(items_of(settings, cid)) == set(loaded)


def test_pgstac_true_is_refused_without_pgstac_enabled(
    azurite_connection_string: str, postgres_database: PostgresDatabase
) -> None:
    services = make_container(make_settings(azurite_connection_string, postgres_database))
    try:
        with pytest.raises(InvalidRequestError) as refused:
            services.job_service.submit("process_raster", {"blob_name": "x.tif", "pgstac": True})
        assert "pgstac" in json.dumps(refused.value.details)
        assert "ingest_stac" not in {c.job_type for c in services.registry.all()}
    finally:
        services.close()


def test_catalog_container_with_pgstac_true_loads_its_catalog(
    settings: Settings, container: ServiceContainer, storage: BlobStorage, tmp_path: Any
) -> None:
    prefix, cid = f"cc-{secrets.token_hex(3)}/", f"cc-{secrets.token_hex(3)}"
    for name in ("a", "b"):
        source = rasters.uint8_rgb(tmp_path / f"{name}.tif", width=64, height=48)
        storage.upload_file("bronze", f"{prefix}{name}.tif", source, content_type="image/tiff")
    params = {"container": "bronze", "prefix": prefix, "collection_id": cid, "pgstac": True}
    job = container.job_service.submit("catalog_container", params).job
    status = pump_until_terminal(container, job.job_id, timeout=120)
    assert status["status"] == "completed", status
    assert status["result"]["pgstac"] == {"collection": cid, "items": 2, "deleted": 0}
    hrefs = {item["assets"][next(iter(item["assets"]))]["href"] for item in items_of(settings, cid).values()}
    assert len(hrefs) == 2 and all("/bronze/" in href and href.startswith("http") for href in hrefs)
