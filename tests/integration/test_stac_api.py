"""The STAC API (/api/stac/) on the local host over pgstac, checked with real clients:
stac-api-validator (core, features, item-search, filter), pystac-client, paging by next links, CQL2
filters (text and JSON) with their exact results, queryables and the service-doc page."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


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
        "properties": {"datetime": f"2022-03-{1 + index % 28:02d}T10:00:00Z", "gsd": float(1 + index % 5)},
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


def test_stac_api_validator_passes_core_features_item_search_and_filter(
    host: RunningHost, loaded: dict[str, Any]
) -> None:
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
            "--conformance",
            "filter",
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
    for part in ("CQL2-Text", "CQL2-JSON", "Basic CQL2", "Advanced Comparison Operators", "Temporal Operators"):
        assert f"Validating STAC API - Item Search - Filter Extension - {part} conformance class" in output, part
    assert "service-doc" not in output, output[-6000:]  # no "Link[rel=service-doc] should exist" warning


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


def fetch(url: str, body: Any = None) -> tuple[int, str, Any]:
    """(status, content type, parsed JSON or text) of a GET, or of a POST of ``body`` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, media_type, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        status, media_type, raw = err.code, err.headers.get("Content-Type", ""), err.read()
    text = raw.decode("utf-8")
    return status, media_type, json.loads(text) if "json" in media_type else text


def search_ids(url: str, body: Any = None) -> set[str]:
    status, _, page = fetch(url, body)
    assert status == 200, page
    assert "next" not in {link["rel"] for link in page["links"]}, "the test expects one page"
    return {f["id"] for f in page["features"]}


def synthetic(indices: Any) -> set[str]:
    return {f"item-{i:03d}" for i in indices}


def test_cql2_text_and_json_filters_return_exactly_the_matching_items(
    host: RunningHost, loaded: dict[str, Any]
) -> None:
    search = f"{host.base_url}/stac/search"
    late = "collection = 'stac-api-test' AND datetime >= TIMESTAMP('2022-03-20T00:00:00Z')"
    expected_late = synthetic(i for i in range(ITEM_COUNT) if 1 + i % 28 >= 20)
    assert search_ids(f"{search}?limit=100&{urlencode({'filter': late})}") == expected_late  # GET: cql2-text default
    late_json = {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "collection"}, COLLECTION]},
            {"op": ">=", "args": [{"property": "datetime"}, {"timestamp": "2022-03-20T00:00:00Z"}]},
        ],
    }
    assert search_ids(search, {"limit": 100, "filter": late_json}) == expected_late  # POST: cql2-json default
    query = urlencode({"filter": json.dumps(late_json), "filter-lang": "cql2-json"})
    assert search_ids(f"{search}?limit=100&{query}") == expected_late
    assert search_ids(search, {"limit": 100, "filter": late, "filter-lang": "cql2-text"}) == expected_late
    box = "POLYGON((2.2 1.2, 3.2 1.2, 3.2 2.2, 2.2 2.2, 2.2 1.2))"  # touches items 12, 13, 22 and 23
    # Restricted to this test's collection: other modules of the session load items into the same pgstac.
    spatial = urlencode({"filter": f"S_INTERSECTS(geometry, {box})", "filter-crs": CRS84, "collections": COLLECTION})
    assert search_ids(f"{search}?limit=100&{spatial}") == synthetic((12, 13, 22, 23))
    gsd = synthetic(i for i in range(ITEM_COUNT) if 1 + i % 5 == 2)
    items_url = f"{host.base_url}/stac/collections/{COLLECTION}/items?limit=100"
    assert search_ids(f"{items_url}&{urlencode({'filter': 'gsd = 2'})}") == gsd
    seen: list[str] = []  # the next links keep the filter: 8 matching items in pages of 3
    url: str | None = f"{host.base_url}/stac/collections/{COLLECTION}/items?limit=3&{urlencode({'filter': 'gsd = 2'})}"
    while url:
        _, _, page = fetch(url)
        seen += [f["id"] for f in page["features"]]
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
    assert len(seen) == len(gsd) and set(seen) == gsd
    paged = Client.open(f"{host.base_url}/stac").search(
        filter="gsd = 2", filter_lang="cql2-text", method="POST", limit=3
    )
    assert sorted(i.id for i in paged.items()) == sorted(gsd)  # POST next links carry the filter in the body
    between = {"op": "between", "args": [{"property": "gsd"}, 2, 3]}
    assert search_ids(search, {"limit": 100, "collections": [COLLECTION], "filter": between}) == synthetic(
        i for i in range(ITEM_COUNT) if 2 <= 1 + i % 5 <= 3
    )
    # over both collections of this test, process_raster's items are the only ones in EPSG:32633 and before 2022
    written = {ref["blob"].rsplit("/", 1)[-1].removesuffix(".json") for ref in loaded["stac_items"]}
    raster_collection = loaded["pgstac"]["collection"]
    client = Client.open(f"{host.base_url}/stac")
    for method, lang, cql in (
        ("GET", "cql2-text", "proj:code = 'EPSG:32633'"),
        ("POST", "cql2-json", {"op": "<", "args": [{"property": "datetime"}, {"timestamp": "2022-01-01T00:00:00Z"}]}),
    ):
        found = client.search(
            collections=[raster_collection, COLLECTION], filter=cql, filter_lang=lang, method=method, max_items=100
        )
        assert {i.id for i in found.items()} == written, (method, cql)


def test_bad_filters_are_400_naming_the_field(host: RunningHost, loaded: dict[str, Any]) -> None:
    search = f"{host.base_url}/stac/search"
    items_url = f"{host.base_url}/stac/collections/{COLLECTION}/items"
    for url, body, field in (
        (f"{search}?{urlencode({'filter': 'gsd ==== 2'})}", None, "filter"),
        (f"{items_url}?{urlencode({'filter': 'gsd = 2 AND'})}", None, "filter"),
        (f"{search}?{urlencode({'filter': 'gsd = 2', 'filter-lang': 'cql-text'})}", None, "filter-lang"),
        (f"{search}?{urlencode({'filter': 'gsd = 2', 'filter-crs': 'EPSG:4326'})}", None, "filter-crs"),
        (search, {"filter": {"op": "=", "args": 2}}, "filter"),
        (search, {"filter": "gsd = 2"}, "filter"),  # a POST filter is cql2-json unless filter-lang says otherwise
        # valid CQL2 that pgstac refuses in SQL: a number compared with a timestamp, an unknown function
        (f"{search}?{urlencode({'filter': 'datetime > 5'})}", None, "filter"),
        (search, {"filter": {"op": "nosuchfunction", "args": [{"property": "gsd"}]}}, "filter"),
    ):
        status, _, answer = fetch(url, body)
        assert status == 400 and answer["details"][0]["field"] == field, (url, body, answer)


def test_queryables_landing_links_and_the_service_doc_page(host: RunningHost, loaded: dict[str, Any]) -> None:
    base = f"{host.base_url}/stac"
    status, media_type, queryables = fetch(f"{base}/queryables")
    assert status == 200 and media_type.startswith("application/schema+json"), (status, media_type)
    assert queryables["$id"] == f"{base}/queryables" and queryables["type"] == "object"
    assert {"id", "datetime", "geometry"} <= set(queryables["properties"])
    status, media_type, own = fetch(f"{base}/collections/{COLLECTION}/queryables")
    assert status == 200 and media_type.startswith("application/schema+json") and own["type"] == "object"
    assert own["$id"] == f"{base}/collections/{COLLECTION}/queryables"
    status, _, missing = fetch(f"{base}/collections/no-such-collection/queryables")
    assert status == 404, missing
    _, _, landing = fetch(base)
    rels = {link["rel"]: link for link in landing["links"]}
    assert rels["http://www.opengis.net/def/rel/ogc/1.0/queryables"]["href"] == f"{base}/queryables"
    assert rels["service-doc"]["type"] == "text/html"
    _, _, collection = fetch(f"{base}/collections/{COLLECTION}")
    assert f"{base}/collections/{COLLECTION}/queryables" in {link["href"] for link in collection["links"]}
    status, media_type, page = fetch(rels["service-doc"]["href"])
    assert status == 200 and media_type.startswith("text/html"), (status, media_type)
    assert "/stac/search" in page and "/stac/queryables" in page and "filter-lang" in page and "<script" not in page
