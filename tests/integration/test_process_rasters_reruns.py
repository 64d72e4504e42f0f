"""process_rasters run again (issue 12), on real Azurite + Postgres: a retry of a completed_with_errors
job converts the files that failed (after the source was fixed) and keeps the ones that succeeded;
a re-run whose file now tiles differently leaves no tile of the old layout, and the STAC items
match the blobs that are there."""

from __future__ import annotations

import json
import posixpath
import secrets
from pathlib import Path
from typing import Any

import pytest

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.raster.inspect import RasterMetadata
from services.raster.tiling import TaskMemoryModel
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_settings, sql

pytestmark = pytest.mark.integration

# As in test_process_rasters.py: large_for_tiling (1300x1100, 2 x uint16) is cut into 2x2 tiles.
TEST_BUDGET = TaskMemoryModel(budget_bytes=0, worker_baseline_bytes=0).tile_peak_bytes(1024, 1024, 2, 2)


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        raster_task_memory_budget_bytes=TEST_BUDGET,
        raster_worker_baseline_bytes=0,
    )


def pump_until_done(container: ServiceContainer, job_id: str) -> dict[str, Any]:
    pump = QueuePump(container, workers=2)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=120)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


def upload(storage: BlobStorage, blob: str, path: Path) -> None:
    storage.upload_file("bronze", blob, path, content_type="image/tiff")


def items_of(storage: BlobStorage, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The collection's items as written (item id → item), each asset's blob resolved."""
    collection_blob = status["result"]["outputs"]["collection"]["blob"]
    folder = posixpath.dirname(collection_blob)
    items = {}
    for blob in storage.list_blobs("silver", folder + "/"):
        if blob.name != collection_blob and blob.name.endswith(".json"):
            item = json.loads(storage.download_range("silver", blob.name))
            href = item["assets"]["data"]["href"]
            item["asset_blob"] = posixpath.normpath(posixpath.join(posixpath.dirname(blob.name), href))
            items[item["id"]] = item
    return items


def test_a_retry_converts_the_failed_files_and_keeps_the_others(
    container: ServiceContainer, storage: BlobStorage, tmp_path: Path
) -> None:
    run = f"retry-{secrets.token_hex(3)}/"
    upload(storage, run + "good.tif", rasters.uint8_rgb(tmp_path / "good.tif", 64, 48))
    upload(storage, run + "fixed.tif", rasters.corrupt(tmp_path / "corrupt.tif"))
    job_id = container.job_service.submit("process_rasters", {"prefix": run}).job.job_id
    first = pump_until_done(container, job_id)
    assert first["status"] == "completed_with_errors", first["error"]
    assert [f["name"] for f in first["result"]["failed_files"]] == [run + "fixed.tif"]
    [good_cog] = [item["asset_blob"] for item in items_of(storage, first).values()]
    good_before = storage.properties("silver", good_cog)

    upload(storage, run + "fixed.tif", rasters.uint16_multiband(tmp_path / "fixed.tif", 40, 30, 3))  # the fix
    container.job_control.retry(job_id)
    retried = pump_until_done(container, job_id)

    assert retried["status"] == "completed", retried["error"]
    assert retried["result"]["files"] == {"total": 2, "converted": 2, "failed": 0, "tiled": 0}
    assert retried["result"]["failed_files"] == []
    items = items_of(storage, retried)
    assert len(items) == 2 == retried["result"]["outputs"]["cogs"]
    for item in items.values():
        assert storage.exists("silver", item["asset_blob"]), item["asset_blob"]
    good_after = storage.properties("silver", good_cog)
    assert good_after.etag == good_before.etag, "the file that had succeeded is not converted again"


def test_a_retry_with_the_file_still_bad_stays_completed_with_errors(
    container: ServiceContainer, storage: BlobStorage, tmp_path: Path
) -> None:
    run = f"retry-bad-{secrets.token_hex(3)}/"
    upload(storage, run + "good.tif", rasters.uint8_rgb(tmp_path / "good.tif", 64, 48))
    upload(storage, run + "bad.tif", rasters.corrupt(tmp_path / "corrupt.tif"))
    job_id = container.job_service.submit("process_rasters", {"prefix": run}).job.job_id
    assert pump_until_done(container, job_id)["status"] == "completed_with_errors"
    container.job_control.retry(job_id)
    retried = pump_until_done(container, job_id)
    assert retried["status"] == "completed_with_errors"
    assert retried["result"]["files"]["failed"] == 1 and retried["result"]["files"]["converted"] == 1
    [failed] = retried["result"]["failed_files"]
    assert failed["name"] == f"{run}bad.tif" and "cannot be read as a GeoTIFF" in failed["reason"]


def test_a_rerun_with_another_tiling_leaves_no_stale_tile(
    container: ServiceContainer, storage: BlobStorage, tmp_path: Path
) -> None:
    run = f"retile-{secrets.token_hex(3)}/"
    upload(storage, run + "big.tif", rasters.large_for_tiling(tmp_path / "big.tif"))
    upload(storage, run + "small.tif", rasters.uint8_rgb(tmp_path / "small.tif", 64, 48))
    params = {"prefix": run}
    job_id = container.job_service.submit("process_rasters", params).job.job_id
    first = pump_until_done(container, job_id)
    assert first["status"] == "completed", first["error"]
    assert first["result"]["files"]["tiled"] == 1
    [mosaic] = first["result"]["outputs"]["mosaic_vrts"]
    folder = posixpath.dirname(mosaic["blob"]) + "/"
    assert len([b for b in storage.list_blobs("silver", folder) if b.name.endswith(".tif")]) == 4
    # Not this job's: a file of another name in its folder, and a sub-folder (never touched).
    foreign = [folder + "notes.txt", folder + "deeper/tile_r0_c1.tif"]
    for blob in foreign:
        storage.upload_bytes("silver", blob, b"not ours", content_type="text/plain")

    upload(storage, run + "big.tif", rasters.large_for_tiling(tmp_path / "big2.tif", 900, 700))  # now one tile
    container.job_service.submit("process_rasters", {**params, "replace": True})
    again = pump_until_done(container, job_id)

    assert again["status"] == "completed", again["error"]
    assert again["result"]["files"]["tiled"] == 0 and again["result"]["outputs"]["mosaic_vrts"] == []
    left = sorted(b.name for b in storage.list_blobs("silver", folder))
    assert left == sorted([folder + "tile_r0_c0.tif", *foreign]), left
    items = items_of(storage, again)
    assert len(items) == 2
    referenced = {item["asset_blob"] for item in items.values()}
    written = {b.name for b in storage.list_blobs("silver", f"cogs/{run}") if b.name.endswith(".tif")}
    assert referenced == written - {folder + "deeper/tile_r0_c1.tif"}


def test_warped_files_are_tiled_with_the_warp_buffer_counted(
    container: ServiceContainer, storage: BlobStorage, settings: Settings, tmp_path: Path
) -> None:
    """Inspection plans a warped file's tiles with GDAL's warp buffer in the per-task estimate
    (services/raster/tiling.py), so no warped tile task is planned over the budget."""
    run = f"warped-{secrets.token_hex(3)}/"
    upload(storage, run + "rgb.tif", rasters.uint8_rgb(tmp_path / "rgb.tif"))
    job_id = container.job_service.submit("process_rasters", {"prefix": run, "web_optimized": True}).job.job_id
    status = pump_until_done(container, job_id)
    assert status["status"] == "completed", status["error"]
    [(records,)] = sql(
        settings, "SELECT results FROM blob_chunks WHERE job_id = %s AND chunk_key LIKE 'chunk_%%'", (job_id,)
    )
    [record] = records
    metadata = RasterMetadata.from_dict(record["metadata"])
    assert metadata.warp is not None
    scale = (metadata.warp["scale"][0], metadata.warp["scale"][1])
    model = TaskMemoryModel(TEST_BUDGET, worker_baseline_bytes=0, upload_buffer_bytes=storage.upload_buffer_bytes)
    for tile in record["tiles"]:
        assert model.fits(tile["width"], tile["height"], metadata.count, metadata.itemsize, warp_scale=scale), tile
    assert status["result"]["files"]["tiled"] == 1
