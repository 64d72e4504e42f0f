"""validate_stac end to end on real Azurite + Postgres: process_raster's output validates with zero
errors (prefix and catalog-walk modes, checksums verified against the COGs); a prepared container of
deliberately broken objects reports each under its type with its path, in the job result and in the
JSON Lines report; a missing catalog fails the job; bad parameters are a 400."""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rasterio

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import InvalidRequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.raster.inspect import inspect_dataset
from services.stac.builder import AssetFile, build_item
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_settings

pytestmark = pytest.mark.integration

ASSET_BYTES = b"0123456789"
UNKNOWN_EXTENSION = "https://example.com/unknown/v1.0.0/schema.json"


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database)


@pytest.fixture(scope="module")
def run_id() -> str:
    return secrets.token_hex(3)


def run_job(container: ServiceContainer, job_type: str, params: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    job_id = container.job_service.submit(job_type, params).job.job_id
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=timeout)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


@pytest.fixture(scope="module")
def raster_outputs(
    container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """process_raster's outputs of a small raster and of one across the antimeridian."""
    folder = tmp_path_factory.mktemp("sources")
    storage.ensure_container("bronze")
    outputs = []
    for name, make in (("rgb", rasters.uint8_rgb), ("anti", rasters.antimeridian)):
        blob = f"vs-{run_id}/{name}.tif"
        storage.upload_file("bronze", blob, make(folder / f"{name}.tif"), content_type="image/tiff")
        status = run_job(container, "process_raster", {"blob_name": blob})
        assert status["status"] == "completed", status["error"]
        outputs.append(status["result"]["outputs"])
    return outputs


def collection_prefix(outputs: dict[str, Any]) -> str:
    return outputs["stac_collection"]["blob"].rsplit("/", 1)[0] + "/"


@pytest.mark.parametrize("index", [0, 1])
def test_process_raster_output_is_valid(
    container: ServiceContainer, raster_outputs: list[dict[str, Any]], index: int
) -> None:
    outputs = raster_outputs[index]
    status = run_job(container, "validate_stac", {"prefix": collection_prefix(outputs)})
    assert status["status"] == "completed", status["error"]
    result = status["result"]
    items = len(outputs["stac_items"])
    assert (result["objects"], result["valid"], result["invalid"]) == (items + 1, items + 1, 0), result["errors"]
    assert result["errors"] == {}
    assert result["by_stac_type"] == {"Collection": 1, "Feature": items}
    assert result["checksums_verified"] == items >= 1  # every COG's file:checksum hashed and matched
    assert result["objects_per_second_per_task"] > 0


def test_catalog_walk_of_process_raster_output(
    container: ServiceContainer, raster_outputs: list[dict[str, Any]], storage: BlobStorage
) -> None:
    outputs = raster_outputs[0]
    catalog = outputs["stac_collection"]["blob"]
    status = run_job(container, "validate_stac", {"catalog": catalog, "chunk_size": 1})
    assert status["status"] == "completed", status["error"]
    result = status["result"]
    assert result["catalog"] == catalog and result["prefix"] is None
    assert result["objects"] == result["valid"] == len(outputs["stac_items"]) + 1
    assert result["chunks"] == result["objects"]  # chunk_size 1: one task per object
    report = storage.properties(result["report"]["container"], result["report"]["blob"])
    assert report.size == 0  # nothing to report


# --- a container of broken objects ---------------------------------------------------------------


def base_item(tmp_path: Path) -> dict[str, Any]:
    """A valid Item (projection, raster, file extensions) whose asset ``./data.bin`` sits beside it."""
    with rasterio.open(rasters.uint8_rgb(tmp_path / "s.tif", 40, 30)) as dataset:
        meta = inspect_dataset(dataset)
    asset = AssetFile(
        href="./data.bin", size=len(ASSET_BYTES), sha256=hashlib.sha256(ASSET_BYTES).hexdigest(), media_type="x/y"
    )
    item = build_item("valid", meta, asset, item_datetime=datetime(2024, 5, 6, tzinfo=UTC))
    document = item.to_dict(include_self_link=False)
    document["links"] = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
    return document


def asset(document: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = document["assets"]["data"]
    return data


def shrink_bbox(d: dict[str, Any]) -> None:
    west, south, east, north = d["bbox"]
    d["bbox"] = [west, south, (west + east) / 2, north]


# Object name -> (the change that breaks it, the problem type it must be reported under).
BROKEN: dict[str, tuple[Any, str]] = {
    "schema": (lambda d: d.pop("geometry"), "schema"),
    "unknown-extension": (lambda d: d["stac_extensions"].append(UNKNOWN_EXTENSION), "unknown_extension"),
    "broken-link": (lambda d: d["links"].append({"rel": "related", "href": "../nowhere/x.json"}), "broken_link"),
    "missing-asset": (lambda d: asset(d).update({"href": "./missing.tif"}), "missing_asset"),
    "wrong-checksum": (lambda d: asset(d).update({"file:checksum": "1220" + "00" * 32}), "checksum_mismatch"),
    "wrong-size": (lambda d: asset(d).update({"file:size": len(ASSET_BYTES) + 1}), "size_mismatch"),
    "bbox": (shrink_bbox, "bbox_geometry"),
    "datetime": (lambda d: d["properties"].update({"datetime": "2024-05-06 10:00"}), "datetime"),
    "bad-id": (lambda d: d.update({"id": "bad id/with slash"}), "invalid_id"),
}


@pytest.fixture(scope="module")
def broken(storage: BlobStorage, run_id: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``vs-{run}/broken/``: a catalog linking a valid item, one item per BROKEN entry, a blob that is
    not JSON, and one link to an item that does not exist. Each item in its own folder with its asset."""
    prefix = f"vs-{run_id}/broken/"
    storage.ensure_container("silver")
    base = base_item(tmp_path_factory.mktemp("base"))
    names = ["valid", *BROKEN]
    for name in names:
        document = copy.deepcopy(base)
        if name != "valid":
            document["id"] = name
            BROKEN[name][0](document)
        storage.upload_bytes("silver", f"{prefix}{name}/{name}.json", json.dumps(document).encode(), content_type="a/j")
        storage.upload_bytes("silver", f"{prefix}{name}/data.bin", ASSET_BYTES, content_type="x/y")
    storage.upload_bytes("silver", f"{prefix}not-json/not-json.json", b"{not json", content_type="a/j")
    storage.upload_bytes("silver", f"{prefix}empty.json", b"", content_type="a/j")
    links = [{"rel": "item", "href": f"./{name}/{name}.json"} for name in [*names, "not-json", "gone"]]
    catalog = {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": "broken",
        "description": "deliberately broken objects",
        "links": links,
    }
    storage.upload_bytes("silver", f"{prefix}catalog.json", json.dumps(catalog).encode(), content_type="a/j")
    storage.upload_bytes("silver", f"{prefix}readme.txt", b"not a .json: not listed", content_type="text/plain")
    return prefix


EXPECTED = {f"{name}/{name}.json": kind for name, (_change, kind) in BROKEN.items()}
EXPECTED["not-json/not-json.json"] = "not_json"
EXPECTED["empty.json"] = "not_json"  # an empty blob (a range read would be a 416)
EXPECTED["catalog.json"] = "broken_link"  # its item link to gone/gone.json


@pytest.fixture(scope="module")
def broken_result(container: ServiceContainer, broken: str) -> dict[str, Any]:
    status = run_job(container, "validate_stac", {"prefix": broken, "chunk_size": 4, "max_paths_per_error": 5})
    assert status["status"] == "completed", status["error"]  # invalid STAC is a finding, not a failure
    return status


def test_every_broken_object_is_reported_under_its_type(broken_result: dict[str, Any], broken: str) -> None:
    result = broken_result["result"]
    assert result["objects"] == len(BROKEN) + 4  # + valid, not JSON, empty, the catalog
    assert result["valid"] == 1 and result["invalid"] == len(EXPECTED)
    assert result["chunks"] == 4  # 13 objects in chunks of 4
    for path, kind in EXPECTED.items():
        assert kind in result["errors"], (kind, result["errors"])
        assert broken + path in result["errors"][kind]["paths"], (kind, result["errors"][kind])
    assert f"{broken}valid/valid.json" not in {p for group in result["errors"].values() for p in group["paths"]}
    # checksums: every item's data.bin (all but missing-asset's) was hashed
    assert result["checksums_verified"] == len(BROKEN)
    assert result["errors"]["checksum_mismatch"]["objects"] == 1
    assert result["errors"]["size_mismatch"]["paths"] == [f"{broken}wrong-size/wrong-size.json"]


def test_the_jsonl_report_has_one_line_per_object_with_problems(
    broken_result: dict[str, Any], broken: str, storage: BlobStorage
) -> None:
    ref = broken_result["result"]["report"]
    assert (ref["container"], ref["blob"]) == ("silver", f"validation/silver/{broken_result['job_id']}.jsonl")
    lines = [json.loads(line) for line in storage.download_range("silver", ref["blob"]).decode().splitlines()]
    by_path = {line["path"].removeprefix(broken): line for line in lines}
    assert set(by_path) == set(EXPECTED)
    for path, kind in EXPECTED.items():
        assert kind in {p["type"] for p in by_path[path]["problems"]}, by_path[path]
        assert all(p["message"] for p in by_path[path]["problems"])
    assert by_path["bad-id/bad-id.json"]["id"] == "bad id/with slash"
    assert by_path["not-json/not-json.json"]["stac_type"] is None
    assert by_path["catalog.json"]["stac_type"] == "Catalog"
    assert "gone/gone.json" in by_path["catalog.json"]["problems"][0]["message"]


def test_catalog_walk_reaches_the_linked_objects(container: ServiceContainer, broken: str) -> None:
    status = run_job(container, "validate_stac", {"catalog": f"{broken}catalog.json"})
    assert status["status"] == "completed", status["error"]
    result = status["result"]
    assert result["objects"] == len(BROKEN) + 3  # the catalog, the valid item, broken ones, not JSON (not empty.json)
    assert set(result["errors"]) == set(EXPECTED.values())
    assert result["invalid"] == len(EXPECTED) - 1


def test_a_missing_catalog_fails_the_job(container: ServiceContainer, run_id: str) -> None:
    status = run_job(container, "validate_stac", {"catalog": f"vs-{run_id}/none/catalog.json"})
    assert status["status"] == "failed"
    assert "does not exist" in json.dumps(status["error"])


def test_bad_parameters_are_a_400(container: ServiceContainer) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        container.job_service.submit("validate_stac", {"prefix": "a/", "catalog": "a/c.json", "chunk_size": 0})
    assert caught.value.details
    with pytest.raises(InvalidRequestError):
        container.job_service.submit("validate_stac", {"container": "not-allowed"})
