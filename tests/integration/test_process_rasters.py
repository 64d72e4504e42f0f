"""process_rasters end to end on real Azurite + Postgres: a prefix of small rasters of several dtypes,
one raster big enough (at the test budget) to be tiled, a corrupt TIFF and a text file named .tif.
The job must end completed_with_errors with ONE collection (an item per output COG), every COG valid
and pixel-identical to its source, the bad files' reasons reported, small files batched."""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds
from rio_cogeo.cogeo import cog_validate

from controllers.process_rasters_plan import MIN_BATCHES
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import ConflictError, InvalidRequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.raster.tiling import TaskMemoryModel
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_settings, sql
from tests.support.stac_schemas import stac_errors

pytestmark = pytest.mark.integration

# As in test_process_raster.py: large_for_tiling (1300x1100, 2 x uint16) is cut into 2x2 tiles.
TEST_BUDGET = TaskMemoryModel(budget_bytes=0, worker_baseline_bytes=0).tile_peak_bytes(1024, 1024, 2, 2)
MAX_FILES = 3
SMALL: dict[str, Callable[[Path], Path]] = {
    "rgb_a.tif": lambda p: rasters.uint8_rgb(p, 64, 48),
    "rgb_b.tif": lambda p: rasters.uint8_rgb(p, 300, 200),
    "multi.tif": lambda p: rasters.uint16_multiband(p, 40, 30, 3),
    "deep/nan.tif": lambda p: rasters.float32_nodata_nan(p, 70, 60),
    "palette.TIFF": lambda p: rasters.paletted(p, 90, 80),
    "one_pixel.tif": rasters.one_pixel,
    "anti meridian.tif": rasters.antimeridian,
}
BAD = {"corrupt.tif": rasters.corrupt, "notes.tif": rasters.not_a_raster}


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        raster_task_memory_budget_bytes=TEST_BUDGET,
        raster_worker_baseline_bytes=0,
    )


@pytest.fixture(scope="module")
def sources(storage: BlobStorage, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path]]:
    """Uploaded under a fresh prefix: blob name → local file (good ones only)."""
    run = f"bulk-{secrets.token_hex(3)}/"
    folder = tmp_path_factory.mktemp("bulk")
    good = {name: make(folder / name.replace("/", "_")) for name, make in SMALL.items()}
    good["big.tif"] = rasters.large_for_tiling(folder / "big.tif")
    bad = {name: make(folder / name) for name, make in BAD.items()}
    (folder / "readme.txt").write_text("not listed: no .tif suffix\n")

    def upload(item: tuple[str, Path]) -> None:
        storage.upload_file("bronze", run + item[0], item[1], content_type="image/tiff")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, [*good.items(), *bad.items(), ("readme.txt", folder / "readme.txt")]))
    return run, good


def run_job(container: ServiceContainer, params: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    job_id = container.job_service.submit("process_rasters", params).job.job_id
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=timeout)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


@pytest.fixture(scope="module")
def bulk(container: ServiceContainer, sources: tuple[str, dict[str, Path]]) -> dict[str, Any]:
    run, _ = sources
    return run_job(container, {"prefix": run, "max_files_per_task": MAX_FILES, "chunk_size": 4})


def test_the_job_ends_completed_with_errors_naming_the_bad_files(
    bulk: dict[str, Any], sources: tuple[str, dict[str, Path]]
) -> None:
    run, good = sources
    assert bulk["status"] == "completed_with_errors", bulk["error"]
    result = bulk["result"]
    assert result["files"] == {"total": len(good) + 2, "converted": len(good), "failed": 2, "tiled": 1}
    reasons = {failure["name"]: failure["reason"] for failure in result["failed_files"]}
    assert set(reasons) == {run + name for name in BAD}
    assert all("cannot be read as a GeoTIFF" in reason and "\n" not in reason for reason in reasons.values())
    # The report task carries the reasons into the job's errors.
    first = result["errors"]["first_errors"]
    assert [(e["stage"], e["task_key"]) for e in first] == [("catalog", "report")]
    assert "2 of 10 files failed" in first[0]["error"] and run + "corrupt.tif" in first[0]["error"]


def test_the_status_counts_files_per_stage(bulk: dict[str, Any], sources: tuple[str, dict[str, Path]]) -> None:
    """Per-file progress (JobController.progress_counters) summed over each stage's completed tasks."""
    _, good = sources
    by_name = {stage["name"]: stage for stage in bulk["progress"]["stages"]}
    inspect, convert = by_name["inspect"]["counters"], by_name["convert"]["counters"]
    assert (inspect["files"], inspect["valid"], inspect["failed"]) == (len(good) + 2, len(good), 2)
    # Every good file converted; the big one as 4 tiles, each counted.
    assert (convert["converted"], convert["failed"]) == (len(good) - 1 + 4, 0)
    assert set(by_name["list"]["counters"]) == {"files", "valid", "converted", "failed"}


def collection_of(
    storage: BlobStorage, bulk: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    ref = bulk["result"]["outputs"]["collection"]
    collection = json.loads(storage.download_range(ref["container"], ref["blob"]))
    folder = posixpath.dirname(ref["blob"])
    items = []
    for link in collection["links"]:
        if link["rel"] == "item":
            blob = posixpath.normpath(posixpath.join(folder, link["href"]))
            items.append((blob, json.loads(storage.download_range(ref["container"], blob))))
    return collection, items


def test_one_collection_with_an_item_per_output_cog(
    bulk: dict[str, Any], storage: BlobStorage, sources: tuple[str, dict[str, Path]]
) -> None:
    _, good = sources
    collection, items = collection_of(storage, bulk)
    assert stac_errors(collection) == []
    assert len(items) == len(good) - 1 + 4  # the big file: one item per tile
    assert bulk["result"]["outputs"]["items"] == len(items) == bulk["result"]["outputs"]["cogs"]
    for blob, item in items:
        assert stac_errors(item) == [], blob
        assert item["collection"] == collection["id"]
        assert all(not link["href"].startswith("/") for link in item["links"])


def test_every_cog_is_valid_and_pixel_identical_to_its_source(
    bulk: dict[str, Any], storage: BlobStorage, sources: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    run, good = sources
    _, items = collection_of(storage, bulk)
    by_source: dict[str, list[Path]] = {}
    for n, (blob, item) in enumerate(items):
        asset = item["assets"]["data"]
        cog_blob = posixpath.normpath(posixpath.join(posixpath.dirname(blob), asset["href"]))
        local = tmp_path / f"{n}.tif"
        local.write_bytes(storage.download_range("silver", cog_blob))
        assert asset["file:checksum"] == "1220" + hashlib.sha256(local.read_bytes()).hexdigest()
        assert asset["file:size"] == local.stat().st_size
        assert cog_validate(str(local), quiet=True)[0], cog_blob
        name = asset["title"].split(" tile_")[0]
        assert cog_blob.startswith("cogs/" + run), cog_blob  # process_raster's layout: the source path
        by_source.setdefault(name, []).append(local)
    assert set(by_source) == {run + name for name in good}
    for name, outputs in by_source.items():
        with rasterio.open(good[name.removeprefix(run)]) as src:
            expected = src.read()
            mosaic = np.zeros_like(expected)
            for local in outputs:
                with rasterio.open(local) as cog:
                    assert cog.dtypes == src.dtypes and cog.crs == src.crs
                    assert (cog.nodata == src.nodata) or (np.isnan(cog.nodata) and np.isnan(src.nodata))
                    rows, cols = from_bounds(*cog.bounds, transform=src.transform).round_offsets().toslices()
                    mosaic[:, rows, cols] = cog.read()
            np.testing.assert_array_equal(mosaic, expected, err_msg=name)


def test_small_files_are_batched_and_the_big_one_tiled(
    bulk: dict[str, Any], settings: Settings, storage: BlobStorage, sources: tuple[str, dict[str, Path]]
) -> None:
    run, good = sources
    rows = sql(
        settings, "SELECT task_key FROM tasks WHERE job_id = %s AND stage = 3 ORDER BY task_key", (bulk["job_id"],)
    )
    keys = [key for (key,) in rows]
    batches = [key for key in keys if key.startswith("batch_")]
    tiles = [key for key in keys if key.startswith("file_")]
    # 7 small files at most 3 per task, and at least MIN_BATCHES (4) tasks: 2 + 2 + 2 + 1.
    assert len(batches) == max(math.ceil((len(good) - 1) / MAX_FILES), MIN_BATCHES)
    assert len(tiles) == 4 and all(
        key.endswith(("tile_r0_c0", "tile_r0_c1", "tile_r1_c0", "tile_r1_c1")) for key in tiles
    )
    assert len(keys) < len(good) + 2  # fewer convert tasks than files
    assert bulk["progress"]["stages"][2]["task_count"] == len(keys)
    mosaics = bulk["result"]["outputs"]["mosaic_vrts"]
    assert len(mosaics) == 1 and mosaics[0]["blob"].startswith(f"cogs/{run}big.tif@")
    assert mosaics[0]["blob"].endswith("/mosaic.vrt")
    with (
        rasterio.Env(**storage.gdal_options()),
        rasterio.open(f"/vsiaz/silver/{mosaics[0]['blob']}") as vrt,
        rasterio.open(good["big.tif"]) as src,
    ):
        np.testing.assert_array_equal(vrt.read(), src.read())
    # Progress per file: every inspect and convert task reports its counts.
    results = sql(settings, "SELECT stage, result FROM tasks WHERE job_id = %s AND stage IN (2, 3)", (bulk["job_id"],))
    assert sum(r["files"] for stage, r in results if stage == 2) == len(good) + 2
    assert sum(r["failed"] for stage, r in results if stage == 2) == 2
    assert sum(r["converted"] for stage, r in results if stage == 3) == len(good) - 1 + 4


def test_resubmission_is_the_same_job(bulk: dict[str, Any], container: ServiceContainer, settings: Settings) -> None:
    run = bulk["result"]["source"]["prefix"]
    tasks_before = sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s", (bulk["job_id"],))
    again = container.job_service.submit(
        "process_rasters", {"prefix": run, "max_files_per_task": MAX_FILES, "chunk_size": 4}
    )
    assert again.job.job_id == bulk["job_id"] and not again.created
    assert sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s", (bulk["job_id"],)) == tasks_before


def test_a_rerun_replaces_the_outputs_in_place(
    bulk: dict[str, Any], container: ServiceContainer, storage: BlobStorage, sources: tuple[str, dict[str, Path]]
) -> None:
    run, _ = sources
    params = {"prefix": run, "max_files_per_task": MAX_FILES, "chunk_size": 4}
    container.job_service.submit("process_rasters", {**params, "replace": True})
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(job_is_terminal(container, bulk["job_id"]), timeout=120)
    finally:
        pump.close()
    again = container.job_service.job_status(bulk["job_id"])
    assert again["status"] == "completed_with_errors"
    assert again["result"]["outputs"]["collection"] == bulk["result"]["outputs"]["collection"]
    _, items = collection_of(storage, again)
    assert len(items) == bulk["result"]["outputs"]["items"]


def test_bad_parameters_are_a_400_naming_the_field(container: ServiceContainer) -> None:
    for body, field in (
        ({"prefix": "../up"}, "prefix"),
        ({"prefix": "x/", "compression": "png"}, "compression"),
        ({"prefix": "x/", "max_files_per_task": 0}, "max_files_per_task"),
        ({"prefix": "x/", "collection_id": "Not Valid"}, "collection_id"),
        ({"prefix": "x/", "blob_name": "a.tif"}, "blob_name"),
    ):
        with pytest.raises(InvalidRequestError) as raised:
            container.job_service.submit("process_rasters", body)
        assert field in json.dumps(raised.value.details), (body, raised.value.details)


def test_the_collection_has_one_owner_at_a_time(
    bulk: dict[str, Any], container: ServiceContainer, sources: tuple[str, dict[str, Path]]
) -> None:
    """The bulk job completed: its collection is free for another owner, whose submission then holds
    it (a 409 for anyone else, naming the holder and until when) until it has written it."""
    collection_id = bulk["result"]["outputs"]["collection"]["blob"].split("/")[1]
    container.job_service.submit("process_raster", {"blob_name": "x.tif", "collection_id": collection_id})
    with pytest.raises(ConflictError) as raised:  # other options: another owner
        container.job_service.submit(
            "process_rasters", {"prefix": "elsewhere/", "collection_id": collection_id, "compression": "lzw"}
        )
    message = json.dumps(raised.value.details)
    assert "process_raster of bronze/x.tif (claimed until 20" in message and "collection_id" in message
    run, _ = sources
    with pytest.raises(ConflictError):  # the bulk job's own owner too, now
        container.job_service.submit(
            "process_rasters", {"prefix": run, "max_files_per_task": MAX_FILES, "chunk_size": 4, "replace": True}
        )


def test_an_empty_listing_fails_with_a_reason(container: ServiceContainer) -> None:
    status = run_job(container, {"prefix": f"nothing-{secrets.token_hex(3)}/"}, timeout=30)
    assert status["status"] == "failed"
    assert "ends with .tif or .tiff" in status["error"]
