"""process_raster warps instead of refusing (issue 12), end to end on real Azurite + Postgres: rotated,
GCP-only and RPC-only sources, target_crs and web_optimized are converted by real jobs, and the
output tiles, reassembled, are compared with ``gdalwarp`` (Debian's gdal-bin, installed by
``make system-deps``) run with the same options on the same file: ``-et 0`` (exact transformation)
and the job's resampling scale (``-wo XSCALE/YSCALE``); for web_optimized also the job's grid
(``-te``/``-ts``: gdalwarp has no tile-matrix alignment).

Grids must be identical, masks too (alpha in gdalwarp, the internal mask in the COG; or nodata).
Pixels: equal for nearest; for bilinear within ``BILINEAR_TOLERANCE`` of one unit, room for a
rounding change between the rasterio wheel's GDAL (3.10) and Debian's (3.6). Measured: every case
equal, bilinear included. gdalwarp's own default scale (no ``-wo``) gives the same pixels except for
the GCP source (its per-chunk scale differs: max 8 on ~1800 in uint16; recorded as
``gdalwarp_defaults``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.raster.cog import cog_problems
from services.raster.inspect import RasterMetadata
from services.raster.tiling import TaskMemoryModel
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_settings, sql

pytestmark = pytest.mark.integration

# 1024x1024 x 2 bands x 2 bytes per task (no worker baseline), plus GDAL's warp buffer for a 1024-wide
# strip at scale 1 (tile planning counts it for warped sources): the web-optimized RGB is cut into tiles.
BUDGET = TaskMemoryModel(budget_bytes=0, worker_baseline_bytes=0).tile_peak_bytes(1024, 1024, 2, 2, warp_scale=(1, 1))
BILINEAR_TOLERANCE = 1.0  # data units; see the module docstring (measured: 0)
EDGE_MISMATCH = 0.0  # share of pixels whose validity may differ (measured: 0)


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Path]
    parameters: dict[str, Any] = field(default_factory=dict)
    gdalwarp: tuple[str, ...] = ()  # what selects the same warp on gdalwarp's command line
    resampling: str = "bilinear"
    crs: str = "EPSG:32633"


CASES = {
    "rotated": Case(rasters.rotated),
    "rotated_nearest": Case(rasters.rotated, {"resampling": "nearest"}, resampling="nearest"),
    "gcp_only": Case(rasters.gcp_only),
    "rpc_only": Case(partial(rasters.rpc_only, constant=False), gdalwarp=("-rpc",), crs="EPSG:4326"),
    "target_crs": Case(rasters.uint16_multiband, {"target_crs": "EPSG:4326"}, ("-t_srs", "EPSG:4326"), crs="EPSG:4326"),
    "target_crs_paletted": Case(
        rasters.paletted, {"target_crs": "EPSG:3035"}, ("-t_srs", "EPSG:3035"), "nearest", "EPSG:3035"
    ),
    "web_optimized": Case(rasters.uint8_rgb, {"web_optimized": True}, ("-t_srs", "EPSG:3857"), crs="EPSG:3857"),
}
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def gdalwarp() -> str:
    path = shutil.which("gdalwarp")
    if path is None:
        pytest.fail("gdalwarp is missing: `make system-deps` installs Debian's gdal-bin (devstack/bootstrap.py)")
    return path


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        raster_task_memory_budget_bytes=BUDGET,
        raster_worker_baseline_bytes=0,
    )


@pytest.fixture(scope="module")
def warped(
    container: ServiceContainer, storage: BlobStorage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every case converted in one batch of concurrent jobs: name → (local source, job status)."""
    storage.ensure_container("bronze")
    folder, run = tmp_path_factory.mktemp("warp-sources"), secrets.token_hex(3)
    sources, job_ids = {}, []
    for name, case in CASES.items():
        sources[name] = case.make(folder / f"{name}.tif")
        blob = f"warp-{run}/{name}.tif"
        storage.upload_file("bronze", blob, sources[name], content_type="image/tiff")
        job_ids.append(
            container.job_service.submit("process_raster", {"blob_name": blob, **case.parameters}).job.job_id
        )
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(lambda: all(job_is_terminal(container, job_id)() for job_id in job_ids), timeout=120)
    finally:
        pump.close()
    statuses = [container.job_service.job_status(job_id) for job_id in job_ids]
    return {name: (sources[name], status) for name, status in zip(CASES, statuses, strict=True)}


@dataclass
class Mosaic:
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    data: np.ndarray[Any, Any]
    valid: np.ndarray[Any, Any]  # bool
    nodata: float | None
    tiles: int


def mosaic_of(storage: BlobStorage, status: dict[str, Any], folder: Path) -> Mosaic:
    """The job's COG tiles reassembled into one array on the output grid (each a valid COG)."""
    tiles = []
    for index, ref in enumerate(status["result"]["outputs"]["cogs"]):
        local = folder / f"tile{index}.tif"
        local.write_bytes(storage.download_range(ref["container"], ref["blob"]))
        assert cog_problems(local) == [], ref["blob"]  # rio-cogeo's cog_validate (see cog_problems)
        tiles.append(local)
    with rasterio.open(tiles[0]) as first:
        res, crs, count, dtype, nodata = first.res, first.crs, first.count, first.dtypes[0], first.nodata
    opened = [rasterio.open(path) for path in tiles]
    try:
        west = min(t.bounds.left for t in opened)
        north = max(t.bounds.top for t in opened)
        transform = from_origin(west, north, res[0], res[1])
        width = round((max(t.bounds.right for t in opened) - west) / res[0])
        height = round((north - min(t.bounds.bottom for t in opened)) / res[1])
        data = np.zeros((count, height, width), dtype=dtype)
        valid = np.zeros((height, width), dtype=bool)
        for tile in opened:
            col, row = round((tile.bounds.left - west) / res[0]), round((north - tile.bounds.top) / res[1])
            data[:, row : row + tile.height, col : col + tile.width] = tile.read()
            valid[row : row + tile.height, col : col + tile.width] = tile.dataset_mask() > 0
    finally:
        for tile in opened:
            tile.close()
    return Mosaic(crs, transform, data, valid, nodata, len(tiles))


def gdalwarp_command(gdalwarp: str, source: Path, case: Case, *extra: str) -> list[str]:
    # -et 0: exact transformation, as the job warps (services/raster/warp.ERROR_THRESHOLD_PIXELS)
    command = [gdalwarp, "-q", "-overwrite", "-et", "0", "-r", case.resampling, *case.gdalwarp, *extra]
    with rasterio.open(source) as src:
        if src.nodata is None:
            command.append("-dstalpha")  # what the job writes as the internal mask
    return command


def reference(gdalwarp: str, source: Path, case: Case, mosaic: Mosaic, folder: Path) -> tuple[Path, Path]:
    """gdalwarp's warp of ``source`` (its default grid), and the same with the warp's scale pinned as
    the job pins it (``-wo XSCALE/YSCALE``: target pixels per source pixel over the whole raster,
    services/raster/warp.warp_scale). For web_optimized (gdalwarp has no tile-matrix alignment) both
    get the job's grid (``-te``/``-ts``) and the scale is the default grid's extent in target pixels."""
    default, pinned = folder / "gdalwarp.tif", folder / "gdalwarp_scaled.tif"
    grid: list[str] = []
    if case.parameters.get("web_optimized"):
        height, width = mosaic.valid.shape
        west, north = mosaic.transform.c, mosaic.transform.f
        east, south = west + width * mosaic.transform.a, north + height * mosaic.transform.e
        grid = ["-te", *(repr(v) for v in (west, south, east, north)), "-ts", str(width), str(height)]
    subprocess.run([*gdalwarp_command(gdalwarp, source, case), str(source), str(default)], check=True)
    suggested = default
    if grid:
        suggested = folder / "gdalwarp_suggested.tif"
        subprocess.run([*gdalwarp_command(gdalwarp, source, case), str(source), str(suggested)], check=True)
        subprocess.run([*gdalwarp_command(gdalwarp, source, case, *grid), str(source), str(default)], check=True)
    with rasterio.open(source) as src, rasterio.open(suggested) as ref:
        target_res = abs(mosaic.transform.a)
        xscale = ref.width * abs(ref.transform.a) / target_res / src.width
        yscale = ref.height * abs(ref.transform.e) / target_res / src.height
    scale = ["-wo", f"XSCALE={xscale!r}", "-wo", f"YSCALE={yscale!r}"]
    subprocess.run([*gdalwarp_command(gdalwarp, source, case, *grid, *scale), str(source), str(pinned)], check=True)
    return default, pinned


def compare(mosaic: Mosaic, reference: Path, count: int, has_nodata: bool) -> dict[str, Any]:
    with rasterio.open(reference) as ref:
        assert ref.crs == mosaic.crs  # the same grid gdalwarp chose (or was given, for web_optimized)
        assert (ref.height, ref.width) == mosaic.valid.shape
        assert tuple(ref.transform)[:6] == pytest.approx(tuple(mosaic.transform)[:6], rel=1e-12, abs=1e-9)
        expected = ref.read(list(range(1, count + 1)))
        ref_valid = ref.read_masks(1) > 0 if has_nodata else ref.read(count + 1) > 0
    both = mosaic.valid & ref_valid
    diff = np.abs(mosaic.data.astype("float64") - expected.astype("float64"))[:, both]
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": round(float(diff.mean()), 4),
        "values_differing": int(np.count_nonzero(diff)),
        "values_compared": int(diff.size),
        "mask_mismatch": float(np.mean(mosaic.valid != ref_valid)),
        "valid_share": float(both.mean()),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_warped_output_matches_gdalwarp(
    name: str,
    warped: dict[str, tuple[Path, dict[str, Any]]],
    storage: BlobStorage,
    settings: Settings,
    gdalwarp: str,
    tmp_path: Path,
) -> None:
    case = CASES[name]
    source, status = warped[name]
    assert status["status"] == "completed", status["error"]
    assert sql(settings, "SELECT max(attempts) FROM tasks WHERE job_id = %s", (status["job_id"],)) == [(1,)]
    mosaic = mosaic_of(storage, status, tmp_path)
    assert mosaic.crs == rasterio.crs.CRS.from_string(case.crs)
    with rasterio.open(source) as src:
        count, nodata, paletted = src.count, src.nodata, src.colorinterp[0].name == "palette"
        colormap = src.colormap(1) if paletted else None
    assert mosaic.nodata == nodata
    if colormap is not None:
        with rasterio.open(storage_first_tile(storage, status, tmp_path)) as tile:
            assert tile.colormap(1) == colormap
    default, pinned = reference(gdalwarp, source, case, mosaic, tmp_path)
    figures = compare(mosaic, pinned, count, nodata is not None)
    FIGURES[name] = {
        "grid": f"{mosaic.valid.shape[1]}x{mosaic.valid.shape[0]}",
        "tiles": mosaic.tiles,
        "same_options": figures,
        "gdalwarp_defaults": compare(mosaic, default, count, nodata is not None),
    }
    print(f"\n{name}: {FIGURES[name]}")
    assert figures["valid_share"] > 0.3  # most of the grid is the source
    assert figures["mask_mismatch"] <= EDGE_MISMATCH
    if case.resampling == "nearest":
        assert figures["max_abs_diff"] == 0
    else:
        assert figures["max_abs_diff"] <= BILINEAR_TOLERANCE


def storage_first_tile(storage: BlobStorage, status: dict[str, Any], folder: Path) -> Path:
    ref = status["result"]["outputs"]["cogs"][0]
    local = folder / "first.tif"
    local.write_bytes(storage.download_range(ref["container"], ref["blob"]))
    return local


@pytest.mark.parametrize("name", ["rotated", "rpc_only", "target_crs", "web_optimized"])
def test_stac_items_describe_the_output_grid(
    name: str, warped: dict[str, tuple[Path, dict[str, Any]]], storage: BlobStorage, tmp_path: Path
) -> None:
    _, status = warped[name]
    assert status["status"] == "completed", status["error"]
    items = [
        json.loads(storage.download_range("silver", ref["blob"])) for ref in status["result"]["outputs"]["stac_items"]
    ]
    cogs = {ref["blob"].rsplit("/", 1)[-1].removesuffix(".tif"): ref for ref in status["result"]["outputs"]["cogs"]}
    for item in items:
        key = item["id"].rsplit("-", 1)[-1]
        local = tmp_path / f"{key}.tif"
        local.write_bytes(storage.download_range("silver", cogs[key]["blob"]))
        with rasterio.open(local) as tile:
            props = item["properties"]
            assert props["proj:code"] == CASES[name].crs
            assert props["proj:shape"] == [tile.height, tile.width]
            assert props["proj:transform"][:6] == pytest.approx(list(tile.transform)[:6])
            west, south, east, north = rasterio.warp.transform_bounds(tile.crs, "EPSG:4326", *tile.bounds)
        assert item["bbox"] == pytest.approx([west, south, east, north], abs=1e-6)
    if name == "web_optimized":
        assert status["result"]["tiles"] > 1  # the plan tiled the (larger) target grid
        assert status["result"]["outputs"]["mosaic_vrt"] is not None


@pytest.mark.parametrize("name", list(CASES))
def test_every_warped_tile_fits_the_budget_with_the_warp_buffer(
    name: str, warped: dict[str, tuple[Path, dict[str, Any]]], settings: Settings, storage: BlobStorage
) -> None:
    """Tile planning counts GDAL's warp buffer (services/raster/tiling.py): every planned tile's
    estimate, warp buffer included, is within the budget, and the plan reports that estimate."""
    _, status = warped[name]
    assert status["status"] == "completed", status["error"]
    [(plan,)] = sql(settings, "SELECT result FROM tasks WHERE job_id = %s AND stage = 2", (status["job_id"],))
    metadata = RasterMetadata.from_dict(plan["metadata"])
    assert metadata.warp is not None, "every case is warped"
    scale = (metadata.warp["scale"][0], metadata.warp["scale"][1])
    model = TaskMemoryModel(BUDGET, worker_baseline_bytes=0, upload_buffer_bytes=storage.upload_buffer_bytes)
    count, itemsize = metadata.count, metadata.itemsize
    estimates = [
        model.tile_peak_bytes(t["width"], t["height"], count, itemsize, warp_scale=scale) for t in plan["tiles"]
    ]
    assert max(estimates) <= BUDGET, (name, plan["tiles"])
    assert plan["estimated_task_peak_bytes"] == max(estimates)
    largest = max(plan["tiles"], key=lambda t: t["width"] * t["height"])
    unwarped = model.tile_peak_bytes(largest["width"], largest["height"], count, itemsize)
    assert plan["estimated_task_peak_bytes"] > unwarped, "the warp buffer is counted"


def test_warp_never_still_refuses_with_the_reason(
    container: ServiceContainer, storage: BlobStorage, tmp_path: Path
) -> None:
    blob = f"warp-{secrets.token_hex(3)}/gcps.tif"
    storage.upload_file("bronze", blob, rasters.gcp_only(tmp_path / "g.tif"), content_type="image/tiff")
    job_id = container.job_service.submit("process_raster", {"blob_name": blob, "warp": "never"}).job.job_id
    pump = QueuePump(container, workers=1)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=60)
    finally:
        pump.close()
    status = container.job_service.job_status(job_id)
    assert status["status"] == "failed"
    assert 'ground control points only; it must be warped to a map grid, and warp is "never"' in status["error"]
    assert "\n" not in status["error"]
