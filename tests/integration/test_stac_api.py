"""The STAC API (/api/stac/) on the local host over pgstac, checked with real clients:
stac-api-validator (core, features, item-search), pystac-client, and paging by next links."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pystac_client import Client

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from repositories.pgstac_migrator import apply_pgstac_migrations
from schemas.settings import Settings
from tests.support import rasters
from tests.support.engine import make_settings
from tests.support.host import RunningHost, start_host

pytestmark = pytest.mark.integration
COLLECTION = "stac-api-test"
ITEM_COUNT = 37
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    settings = make_settings(azurite_connection_string, postgres_database, pgstac_enabled=True, stac_api_anonymous=True)
    apply_pgstac_migrations(settings.postgres_conninfo())
    return settings


@pytest.fixture(scope="module")
def host(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running = start_host(settings, workers=2, log_path=tmp_path_factory.mktemp("host") / "host.log")
    yield running
    assert running.stop() == 0


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def item(index: int) -> dict[str, Any]:
    x, y = (index % 10) * 1.0, (index // 10) * 1.0
    ring = [[x, y], [x + 0.5, y], [x + 0.5, y + 0.5], [x, y + 0.5], [x, y]]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"item-{index:03d}",
        "collection": COLLECTION,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [x, y, x + 0.5, y + 0.5],
        "properties": {"datetime": f"2022-03-{1 + index % 28:02d}T10:00:00Z"},
        "assets": {"data": {"href": f"https://example.com/{index}.tif", "type": "image/tiff"}},
        "links": [],
    }


@pytest.fixture(scope="module")
def loaded(host: RunningHost, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic collection through ingest_stac and a raster through process_raster (pgstac: true)."""
    storage = BlobStorage(settings.storage_connection_string.get_secret_value())
    for name in ("bronze", "silver"):
        storage.ensure_container(name)
    collection = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": COLLECTION,
        "description": "synthetic items for the STAC API test",
        "license": "other",
        "extent": {"spatial": {"bbox": [[0, 0, 10, 4]]}, "temporal": {"interval": [["2022-03-01T00:00:00Z", None]]}},
        "links": [],
    }
    put = storage.upload_bytes
    put("silver", "api-src/collection.json", json.dumps(collection).encode(), content_type="application/json")
    lines = "\n".join(json.dumps(item(i)) for i in range(ITEM_COUNT)).encode()
    put("silver", "api-src/items.ndjson", lines, content_type="application/json")
    code, job = host.request("POST", "/jobs/ingest_stac", {"prefix": "api-src/", "mode": "upsert"})
    assert code == 202, job
    assert host.wait_for_job(job["job_id"])["status"] == "completed"
    source = rasters.uint8_rgb(tmp_path_factory.mktemp("raster") / "rgb.tif")
    storage.upload_file("bronze", "api/rgb.tif", source, content_type="image/tiff")
    code, job = host.request("POST", "/jobs/process_raster", {"blob_name": "api/rgb.tif", "pgstac": True})
    assert code == 202, job
    status = host.wait_for_job(job["job_id"])
    assert status["status"] == "completed", status
    return status["result"]["outputs"]


def test_stac_api_validator_passes_core_features_and_item_search(host: RunningHost, loaded: dict[str, Any]) -> None:
    geometry = json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 4], [0, 4], [0, 0]]]})
    done = subprocess.run(
        [  # stac-api-validator, with the bundled JSON schemas instead of fetched ones
            sys.executable,
            "-m",
            "tests.support.offline_stac_api_validator",
            "--root-url",
            f"{host.base_url}/stac",
            "--conformance",
            "core",
            "--conformance",
            "features",
            "--conformance",
            "item-search",
            "--collection",
            COLLECTION,
            "--geometry",
            geometry,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=PROJECT_ROOT,
    )
    output = done.stdout + done.stderr
    print(output[-4000:])  # the validator's summary (warnings included), shown with pytest -s
    assert done.returncode == 0 and "Errors: none" in output, output[-6000:]


def test_pystac_client_finds_the_items_a_process_raster_job_ingested(host: RunningHost, loaded: dict[str, Any]) -> None:
    collection_id = loaded["pgstac"]["collection"]
    client = Client.open(f"{host.base_url}/stac")
    found = list(client.search(collections=[collection_id], max_items=100).items())
    written = {ref["blob"].rsplit("/", 1)[-1].removesuffix(".json") for ref in loaded["stac_items"]}
    assert {i.id for i in found} == written and len(found) == loaded["pgstac"]["items"]
    prefix = f"{host.base_url}/stac/collections/{collection_id}/items/"
    assert all(str(i.get_self_href()).startswith(prefix) for i in found)
    for found_item in found:  # hydrated here (hydraters) exactly as pgstac hydrates get_item()
        code, one = get(f"{prefix}{found_item.id}")
        code_search, page = get(f"{host.base_url}/stac/search?ids={found_item.id}&collections={collection_id}")
        assert code == code_search == 200 and page["features"] == [one], found_item.id
    code, landing = get(f"{host.base_url}/stac")
    assert code == 200 and {link["rel"] for link in landing["links"]} >= {"self", "root", "data", "search"}


def test_paging_visits_every_item_exactly_once(host: RunningHost, loaded: dict[str, Any]) -> None:
    client = Client.open(f"{host.base_url}/stac")
    for method in ("GET", "POST"):
        ids = [i.id for i in client.search(collections=[COLLECTION], limit=5, method=method).items()]
        assert len(ids) == ITEM_COUNT == len(set(ids)), method
    seen: list[str] = []
    url: str | None = f"{host.base_url}/stac/collections/{COLLECTION}/items?limit=6"
    pages = 0
    while url:
        code, page = get(url)
        assert code == 200, page
        seen += [f["id"] for f in page["features"]]
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
        pages += 1
    assert sorted(seen) == sorted({f"item-{i:03d}" for i in range(ITEM_COUNT)}) and pages == 7


def test_bad_parameters_are_400_naming_the_parameter(host: RunningHost, loaded: dict[str, Any]) -> None:
    for query, name in (
        ("bbox=1,2,3", "bbox"),
        ("bbox=0,10,1,5", "bbox"),
        ("datetime=yesterday", "datetime"),
        ("datetime=2022-03-05T00:00:00Z/2022-03-01T00:00:00Z", "datetime"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("intersects=%7B%22type%22%3A%22Nope%22%7D", "intersects"),
    ):
        code, body = get(f"{host.base_url}/stac/search?{query}")
        assert code == 400 and body["details"][0]["field"] == name, (query, body)
    code, body = get(f"{host.base_url}/stac/collections/no-such-collection")
    assert code == 404, body
