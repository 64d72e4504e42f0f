"""Job-level hardening on real Azurite + Postgres: fan-out caps (MAX_TASKS_PER_STAGE) fail a job at
planning with one line naming what to raise, and a bad assume_crs is a 400 naming the field while a
good one is stored resolved in the job's parameters."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import rasterio
from pyproj import CRS as ProjCRS
from rasterio.transform import from_origin

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import InvalidRequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.raster.tiling import TaskMemoryModel
from tests.support import rasters
from tests.support.engine import make_settings, pump_until_terminal, sql

pytestmark = pytest.mark.integration

MAX_TASKS = 10
# Holds a 1024x1024 uint8 tile with no worker baseline: a 4096x4096 source is cut into 16 tiles.
BUDGET = TaskMemoryModel(budget_bytes=0, worker_baseline_bytes=0).tile_peak_bytes(1024, 1024, 1, 1)


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        max_tasks_per_stage=MAX_TASKS,
        raster_task_memory_budget_bytes=BUDGET,
        raster_worker_baseline_bytes=0,
    )


def run_job(container: ServiceContainer, job_type: str, params: dict[str, Any]) -> dict[str, Any]:
    job_id = container.job_service.submit(job_type, params).job.job_id
    return pump_until_terminal(container, job_id, workers=2)


def sparse_raster(path: Path, side: int = 4096) -> Path:
    """A big-looking GeoTIFF with no data blocks written (a few KB): only its header is real."""
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 1,
        "dtype": "uint8",
        "crs": rasters.UTM_33N,
        "transform": from_origin(500_000, 6_000_000, 10, 10),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "sparse_ok": True,
    }
    with rasterio.open(path, "w", **profile):
        pass
    return path


@pytest.fixture(scope="module")
def sparse_blob(storage: BlobStorage, tmp_path_factory: pytest.TempPathFactory) -> str:
    blob = f"caps-{secrets.token_hex(3)}/sparse.tif"
    path = sparse_raster(tmp_path_factory.mktemp("caps") / "sparse.tif")
    storage.upload_file("bronze", blob, path, content_type="image/tiff")
    return blob


def cog_tasks(settings: Settings, job_id: str) -> int:
    return int(sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s AND stage = 3", (job_id,))[0][0])


def test_a_tile_size_that_makes_too_many_tiles_fails_at_planning(
    container: ServiceContainer, settings: Settings, sparse_blob: str
) -> None:
    status = run_job(container, "process_raster", {"blob_name": sparse_blob, "tile_size": 512})
    assert status["status"] == "failed"
    error = status["error"]
    assert "tile_size 512 would make 64 tiles" in error and f"the limit is {MAX_TASKS}" in error, error
    assert "raise tile_size" in error and "\n" not in error
    assert cog_tasks(settings, status["job_id"]) == 0


def test_a_budget_that_makes_too_many_tiles_names_the_budget(
    container: ServiceContainer, settings: Settings, sparse_blob: str
) -> None:
    status = run_job(container, "process_raster", {"blob_name": sparse_blob, "collection_id": "caps-budget"})
    assert status["status"] == "failed"
    assert "16 tiles" in status["error"] and "RASTER_TASK_MEMORY_BUDGET_BYTES" in status["error"], status["error"]
    assert cog_tasks(settings, status["job_id"]) == 0


def test_within_the_limit_the_job_runs(container: ServiceContainer, storage: BlobStorage, tmp_path: Path) -> None:
    blob = f"caps-{secrets.token_hex(3)}/small-sparse.tif"
    storage.upload_file("bronze", blob, sparse_raster(tmp_path / "small.tif", 2048), content_type="image/tiff")
    status = run_job(container, "process_raster", {"blob_name": blob, "tile_size": 1024})
    assert status["status"] == "completed", status["error"]
    assert status["result"]["tiles"] == 4


@pytest.mark.parametrize("job_type", ["inventory_container", "catalog_container"])
def test_a_listing_with_too_many_chunks_fails_naming_chunk_size(
    container: ServiceContainer, settings: Settings, storage: BlobStorage, job_type: str
) -> None:
    prefix = f"chunks-{secrets.token_hex(3)}/"
    for index in range(MAX_TASKS + 2):
        storage.upload_bytes("bronze", f"{prefix}n{index:02d}.txt", b"x", content_type="text/plain")
    params: dict[str, Any] = {"prefix": prefix, "chunk_size": 1}
    if job_type == "catalog_container":
        params["collection_id"] = prefix.strip("/")
    status = run_job(container, job_type, params)
    assert status["status"] == "failed"
    error = status["error"]
    assert f"more than {MAX_TASKS} chunks of chunk_size 1" in error and "raise chunk_size" in error, error
    rows = sql(settings, "SELECT count(*) FROM blob_chunks WHERE job_id = %s", (status["job_id"],))
    assert rows == [(0,)]
    # Within the limit the same listing runs.
    params["chunk_size"] = 2
    if job_type == "inventory_container":
        assert run_job(container, job_type, params)["status"] == "completed"


def test_a_bad_assume_crs_is_a_400_naming_the_field(container: ServiceContainer) -> None:
    for value in ("http://127.0.0.1:9/crs.wkt", "/etc/passwd", "+init=epsg:4326", "EPSG:999999"):
        with pytest.raises(InvalidRequestError) as caught:
            container.job_service.submit("process_raster", {"blob_name": "a.tif", "assume_crs": value})
        assert {detail["field"] for detail in caught.value.details} == {"assume_crs"}, value


def test_assume_crs_is_stored_resolved(container: ServiceContainer, settings: Settings) -> None:
    wkt1 = ProjCRS.from_epsg(32633).to_wkt(version="WKT1_GDAL")
    blob = f"stored-{secrets.token_hex(3)}.tif"
    by_code = container.job_service.submit("process_raster", {"blob_name": blob, "assume_crs": "epsg:32633"})
    by_wkt = container.job_service.submit("process_raster", {"blob_name": blob + "x", "assume_crs": wkt1})
    stored = dict(
        sql(
            settings,
            "SELECT job_id, parameters->>'assume_crs' FROM jobs WHERE job_id = ANY(%s)",
            ([by_code.job.job_id, by_wkt.job.job_id],),
        )
    )
    assert stored[by_code.job.job_id] == "EPSG:32633"
    assert stored[by_wkt.job.job_id].startswith("PROJCRS[") and ProjCRS(stored[by_wkt.job.job_id]).to_epsg() == 32633
