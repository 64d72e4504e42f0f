"""process_raster end to end on real Azurite + Postgres: sources uploaded to bronze, jobs pumped
through the engine, outputs read back from silver and checked against the sources."""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config
from rio_cogeo.cogeo import cog_validate

from controllers.process_raster import ProcessRasterController
from controllers.process_raster_parameters import collection_id_for
from devstack.postgres import PostgresDatabase
from devstack.sample_raster import upload_demo_raster
from repositories.blob_storage import BlobStorage
from schemas.errors import InstanceBusyError, InvalidRequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.raster.cog import CogOptions
from services.raster.inspect import inspect_dataset
from services.raster.pipeline import BlobRef, convert_tile
from services.raster.tiling import MIB, TaskMemoryModel, TileWindow
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_settings, sql
from tests.support.stac_schemas import stac_errors

pytestmark = pytest.mark.integration

# With no worker baseline, 54 MiB holds a 1024x1024 tile of 2 uint16 bands (large_for_tiling is cut
# into 2x2 tiles) and every other fixture whole.
TEST_BUDGET = TaskMemoryModel(budget_bytes=0, worker_baseline_bytes=0).tile_peak_bytes(1024, 1024, 2, 2)
GOOD_SOURCES: dict[str, Callable[[Path], Path]] = {
    "uint8_rgb": rasters.uint8_rgb,
    "uint16_multiband": rasters.uint16_multiband,
    "float32_nodata_nan": rasters.float32_nodata_nan,
    "paletted": rasters.paletted,
    "one_pixel": rasters.one_pixel,
    "antimeridian": rasters.antimeridian,
    "large_for_tiling": rasters.large_for_tiling,
}


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        raster_task_memory_budget_bytes=TEST_BUDGET,
        raster_worker_baseline_bytes=0,
    )


@pytest.fixture(scope="module")
def storage(settings: Settings) -> BlobStorage:
    blobs = BlobStorage(settings.storage_connection_string.get_secret_value())
    blobs.ensure_container("bronze")
    blobs.ensure_container("silver")  # tests that write tiles directly do not go through a job
    return blobs


@pytest.fixture(scope="module")
def run_id() -> str:
    return secrets.token_hex(3)


def run_jobs(
    container: ServiceContainer, submissions: list[dict[str, Any]], timeout: float = 90
) -> list[dict[str, Any]]:
    """Submit every job, pump until all are terminal, return their status documents."""
    job_ids = [container.job_service.submit("process_raster", params).job.job_id for params in submissions]
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(lambda: all(job_is_terminal(container, job_id)() for job_id in job_ids), timeout=timeout)
    finally:
        pump.close()
    return [container.job_service.job_status(job_id) for job_id in job_ids]


def download(storage: BlobStorage, ref: dict[str, Any], path: Path) -> Path:
    path.write_bytes(storage.download_range(ref["container"], ref["blob"]))
    return path


@pytest.fixture(scope="module")
def converted(
    container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every good source converted in one batch of concurrent jobs: name → (local source, job status)."""
    folder = tmp_path_factory.mktemp("sources")
    sources, submissions = {}, []
    for name, make in GOOD_SOURCES.items():
        sources[name] = make(folder / f"{name}.tif")
        blob = f"it-{run_id}/{name}.tif"
        storage.upload_file("bronze", blob, sources[name], content_type="image/tiff")
        submissions.append({"blob_name": blob})
    statuses = run_jobs(container, submissions)
    return {name: (sources[name], status) for name, status in zip(GOOD_SOURCES, statuses, strict=True)}


@pytest.mark.parametrize("name", list(GOOD_SOURCES))
def test_outputs_are_valid_cogs_with_the_source_pixels(
    name: str,
    converted: dict[str, tuple[Path, dict[str, Any]]],
    storage: BlobStorage,
    settings: Settings,
    tmp_path: Path,
) -> None:
    source, status = converted[name]
    assert status["status"] == "completed", status["error"]
    cogs = status["result"]["outputs"]["cogs"]
    assert len(cogs) == (4 if name == "large_for_tiling" else 1)
    with rasterio.open(source) as src:
        expected = src.read()
        mosaic = np.full_like(expected, 0)
        for index, ref in enumerate(cogs):
            local = download(storage, ref, tmp_path / f"{index}.tif")
            assert ref["bytes"] == local.stat().st_size
            assert ref["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
            assert cog_validate(str(local), quiet=True)[0], f"{ref['blob']} is not a valid COG"
            with rasterio.open(local) as tile:
                assert tile.dtypes == src.dtypes and tile.count == src.count
                assert (tile.nodata == src.nodata) or (np.isnan(tile.nodata) and np.isnan(src.nodata))
                assert tile.crs == src.crs
                if src.colorinterp[0].name == "palette":
                    assert tile.colormap(1) == src.colormap(1)
                window = rasterio.windows.from_bounds(*tile.bounds, transform=src.transform).round_offsets()
                rows, cols = window.toslices()
                mosaic[:, rows, cols] = tile.read()
        np.testing.assert_array_equal(mosaic, expected)  # the tiles reassemble the source exactly
    assert sql(settings, "SELECT max(attempts) FROM tasks WHERE job_id = %s", (status["job_id"],)) == [(1,)]


def test_a_large_source_is_tiled_with_a_mosaic_vrt(
    converted: dict[str, tuple[Path, dict[str, Any]]], storage: BlobStorage, run_id: str
) -> None:
    source, status = converted["large_for_tiling"]
    outputs = status["result"]["outputs"]
    prefix = f"cogs/it-{run_id}/large_for_tiling.tif"  # the source path, extension kept
    assert [c["blob"] for c in outputs["cogs"]] == [f"{prefix}/tile_r{r}_c{c}.tif" for r in (0, 1) for c in (0, 1)]
    assert outputs["mosaic_vrt"] == {"container": "silver", "blob": f"{prefix}/mosaic.vrt"}
    with (
        rasterio.Env(**storage.gdal_options()),
        rasterio.open(f"/vsiaz/silver/{prefix}/mosaic.vrt") as vrt,
        rasterio.open(source) as src,
    ):
        np.testing.assert_array_equal(vrt.read(), src.read())
        assert vrt.transform == src.transform and vrt.crs == src.crs
    assert status["progress"]["stages"][2]["task_count"] == 4


@pytest.mark.parametrize("name", ["uint8_rgb", "float32_nodata_nan", "paletted", "antimeridian", "large_for_tiling"])
def test_stac_catalog_is_valid_self_contained_and_points_at_the_cogs(
    name: str, converted: dict[str, tuple[Path, dict[str, Any]]], storage: BlobStorage, run_id: str
) -> None:
    _, status = converted[name]
    outputs = status["result"]["outputs"]
    collection_ref = outputs["stac_collection"]
    assert collection_ref["blob"] == f"stac/{collection_id_for(f'it-{run_id}/{name}.tif')}/collection.json"
    collection = json.loads(storage.download_range("silver", collection_ref["blob"]))
    assert stac_errors(collection) == []
    assert len([link for link in collection["links"] if link["rel"] == "item"]) == len(outputs["cogs"])
    cogs_by_blob = {c["blob"]: c for c in outputs["cogs"]}
    for ref in outputs["stac_items"]:
        item = json.loads(storage.download_range("silver", ref["blob"]))
        assert stac_errors(item) == [], ref["blob"]
        assert all(link["rel"] != "self" and not link["href"].startswith("/") for link in item["links"])
        asset = item["assets"]["data"]
        target = posixpath.normpath(posixpath.join(posixpath.dirname(ref["blob"]), asset["href"]))
        assert target in cogs_by_blob, asset["href"]
        assert asset["file:size"] == cogs_by_blob[target]["bytes"]
        assert asset["file:checksum"] == "1220" + cogs_by_blob[target]["sha256"]
        assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    if name == "antimeridian":
        assert item["geometry"]["type"] == "MultiPolygon" and item["bbox"][0] > item["bbox"][2]
    if name == "uint8_rgb":
        assert item["properties"]["datetime"] == "2021-06-15T10:30:00Z"  # the TIFF DateTime tag


BAD_SOURCES: dict[str, tuple[Callable[[Path], Path] | None, dict[str, Any], str]] = {
    "corrupt": (rasters.corrupt, {}, "cannot be read as a GeoTIFF"),
    "truncated": (rasters.truncated, {}, "truncated"),
    "empty": (rasters.empty, {}, "is empty (0 bytes)"),
    "not_a_raster": (rasters.not_a_raster, {}, "cannot be read as a GeoTIFF"),
    "missing": (None, {}, "not found"),
    "no_crs": (rasters.no_crs, {}, "has no CRS; pass assume_crs"),
    "rotated": (
        rasters.rotated,
        {"warp": "never"},
        'rotated or sheared geotransform; it must be warped to a north-up grid, and warp is "never"',
    ),
    "jpeg_float": (rasters.float32_nodata_nan, {"compression": "jpeg"}, "compression 'jpeg' needs uint8 data"),
    "non_earth": (rasters.non_earth, {}, "(Mars (2015) - Sphere / Ocentric) cannot be transformed to WGS 84"),
    "off_earth": (rasters.off_earth, {}, "outline lies off the Earth"),
}


@pytest.fixture(scope="module")
def rejected(
    container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("bad")
    submissions = []
    for name, (make, extra, _) in BAD_SOURCES.items():
        blob = f"it-{run_id}/bad/{name}.tif"
        if make is not None:
            storage.upload_file("bronze", blob, make(folder / f"{name}.tif"), content_type="image/tiff")
        submissions.append({"blob_name": blob, **extra})
    return dict(zip(BAD_SOURCES, run_jobs(container, submissions), strict=True))


@pytest.mark.parametrize("name", list(BAD_SOURCES))
def test_bad_inputs_fail_the_job_in_one_attempt_with_a_one_line_reason(
    name: str, rejected: dict[str, dict[str, Any]], settings: Settings
) -> None:
    status = rejected[name]
    assert status["status"] == "failed"
    error = status["error"]
    assert "stage 1 (validate)" in error and BAD_SOURCES[name][2] in error, error
    assert "\n" not in error
    attempts = sql(settings, "SELECT task_key, attempts, status FROM tasks WHERE job_id = %s", (status["job_id"],))
    assert attempts == [("source", 1, "failed")]


def test_assume_crs_converts_a_raster_without_one(
    container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path: Path
) -> None:
    blob = f"it-{run_id}/assumed.tif"
    storage.upload_file("bronze", blob, rasters.no_crs(tmp_path / "nocrs.tif"), content_type="image/tiff")
    [status] = run_jobs(
        container, [{"blob_name": blob, "assume_crs": "EPSG:32633", "datetime": "2020-02-02T02:02:02Z"}]
    )
    assert status["status"] == "completed", status["error"]
    local = download(storage, status["result"]["outputs"]["cogs"][0], tmp_path / "out.tif")
    with rasterio.open(local) as cog:
        assert cog.crs.to_epsg() == 32633
    item = json.loads(storage.download_range("silver", status["result"]["outputs"]["stac_items"][0]["blob"]))
    assert item["properties"]["datetime"] == "2020-02-02T02:02:02Z"


def test_a_replaced_source_overwrites_removes_stale_tiles_and_supersedes_the_older_job(
    container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path: Path
) -> None:
    blob = f"it-{run_id}/rerun.tif"
    storage.upload_file("bronze", blob, rasters.large_for_tiling(tmp_path / "src.tif"), content_type="image/tiff")
    [first] = run_jobs(container, [{"blob_name": blob, "tile_size": 512}])
    assert first["status"] == "completed" and first["result"]["tiles"] == 9
    assert first["result"]["supersedes"] is None
    smaller = rasters.large_for_tiling(tmp_path / "smaller.tif", width=1000, height=1000)
    storage.upload_file("bronze", blob, smaller, content_type="image/tiff")  # new etag: a new job, same outputs
    [second] = run_jobs(container, [{"blob_name": blob, "tile_size": 512}])
    assert second["job_id"] != first["job_id"]
    assert second["status"] == "completed" and second["result"]["tiles"] == 4
    prefix = posixpath.dirname(second["result"]["outputs"]["cogs"][0]["blob"])
    assert prefix == posixpath.dirname(first["result"]["outputs"]["cogs"][0]["blob"])
    left = sorted(b.name for b in storage.list_blobs("silver", f"{prefix}/"))
    assert left == sorted([c["blob"] for c in second["result"]["outputs"]["cogs"]] + [f"{prefix}/mosaic.vrt"])
    collection_dir = posixpath.dirname(second["result"]["outputs"]["stac_collection"]["blob"])
    items = [b.name for b in storage.list_blobs("silver", f"{collection_dir}/")]
    assert len(items) == 1 + 4
    # The older job no longer claims outputs that were rewritten: its result says by whom.
    older = container.job_service.job_status(first["job_id"])
    assert older["status"] == "completed" and older["result"]["superseded_by"] == second["job_id"]
    assert older["result"]["superseded_at"]
    assert second["result"]["supersedes"] == first["job_id"] and "superseded_by" not in second["result"]


def test_converting_a_tile_twice_writes_the_same_blob(storage: BlobStorage, run_id: str, tmp_path: Path) -> None:
    blob = f"it-{run_id}/twice.tif"
    source = rasters.paletted(tmp_path / "p.tif")
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    with rasterio.open(source) as dataset:
        metadata = inspect_dataset(dataset)
    window = TileWindow(0, 0, 0, 0, metadata.width, metadata.height)
    target = BlobRef("silver", f"cogs/it-{run_id}/twice/tile_r0_c0.tif")
    args = (storage, BlobRef("bronze", blob), metadata, window, target, CogOptions(overview_resampling="mode"))
    first = convert_tile(*args, conversion_slots=threading.Semaphore(1))
    again = convert_tile(*args, conversion_slots=threading.Semaphore(1))
    assert first["cog"] == again["cog"]
    assert [b.name for b in storage.list_blobs("silver", f"cogs/it-{run_id}/twice/")] == [target.blob]
    assert first["peak_rss_bytes"] > 0
    # With every conversion slot taken, the task goes back to the queue (InstanceBusyError, no
    # attempt counted) after a short wait instead of queueing behind the other conversions.
    taken = threading.Semaphore(1)
    taken.acquire()
    with pytest.raises(InstanceBusyError) as busy:
        convert_tile(*args, conversion_slots=taken, slot_wait_seconds=0.2)
    assert 5.0 <= busy.value.retry_after <= 15.0 and "stayed busy" in str(busy.value)


def test_bad_parameters_are_a_400_with_field_errors(container: ServiceContainer) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        container.job_service.submit("process_raster", {"blob_name": "../x.tif", "compression": "gzip"})
    fields = {detail["field"] for detail in caught.value.details}
    assert fields == {"blob_name", "compression"}


def test_the_controller_sizes_gdals_block_cache_from_the_budget(settings: Settings) -> None:
    controller = ProcessRasterController.from_settings(
        settings, BlobStorage(settings.storage_connection_string.get_secret_value())
    )
    assert controller.job_type == "process_raster"
    assert get_gdal_config("GDAL_CACHEMAX") == 16 * MIB  # an eighth of the budget, at least 16 MiB


def test_the_devstack_demo_raster_converts(container: ServiceContainer, settings: Settings) -> None:
    parameters = upload_demo_raster(settings.storage_connection_string.get_secret_value(), size=600)
    [status] = run_jobs(container, [parameters])
    assert status["status"] == "completed", status["error"]
    assert status["result"]["outputs"]["cogs"][0]["blob"] == "cogs/samples/terrain.tif/tile_r0_c0.tif"
    collection_id = collection_id_for(parameters["blob_name"])
    assert status["result"]["outputs"]["stac_collection"]["blob"] == f"stac/{collection_id}/collection.json"


@pytest.mark.parametrize("explicit_id", [False, True])
def test_a_dot_in_the_collection_id_keeps_the_catalog_in_its_own_folder(
    explicit_id: bool, container: ServiceContainer, storage: BlobStorage, run_id: str, tmp_path: Path
) -> None:
    """RGB.byte.tif (a derived id with a dot) and an explicit "….v2" id: pystac took such a path for a
    file and wrote the catalog one level up, so the STAC stage failed (issue 12, item 1)."""
    blob = f"it-{run_id}-{explicit_id}/RGB.byte.tif"
    storage.upload_file("bronze", blob, rasters.uint8_rgb(tmp_path / "rgb.tif"), content_type="image/tiff")
    extra = {"collection_id": f"it-{run_id}.v2"} if explicit_id else {}
    [status] = run_jobs(container, [{"blob_name": blob, **extra}])
    assert status["status"] == "completed", status.get("error")
    collection_blob = status["result"]["outputs"]["stac_collection"]["blob"]
    collection_id = json.loads(storage.download_range("silver", collection_blob))["id"]
    assert "." in collection_id and collection_blob == f"stac/{collection_id}/collection.json"
    for ref in status["result"]["outputs"]["stac_items"]:
        assert ref["blob"].startswith(f"stac/{collection_id}/")
        assert stac_errors(json.loads(storage.download_range("silver", ref["blob"]))) == []


def test_with_raster_read_directly_the_cog_stage_reads_the_blob_without_staging(
    settings: Settings, storage: BlobStorage, run_id: str, tmp_path: Path
) -> None:
    """RASTER_READ_DIRECTLY: the cog tasks convert straight from the blob (no local staging copy),
    and the COG has the source's pixels."""
    from tests.support.engine import make_container

    source = rasters.uint16_multiband(tmp_path / "direct.tif")
    blob = f"it-{run_id}/direct/rgb.tif"
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    direct = make_container(settings.model_copy(update={"raster_read_directly": True}))
    try:
        [status] = run_jobs(direct, [{"blob_name": blob}])
    finally:
        direct.close()
    assert status["status"] == "completed", status["error"]
    staged = sql(
        settings, "SELECT result -> 'staged_because' FROM tasks WHERE job_id = %s AND stage = 3", (status["job_id"],)
    )
    assert staged == [(None,)]  # JSON null: read directly
    cog = download(storage, status["result"]["outputs"]["cogs"][0], tmp_path / "out.tif")
    with rasterio.open(source) as src, rasterio.open(cog) as out:
        assert np.array_equal(src.read(), out.read())
