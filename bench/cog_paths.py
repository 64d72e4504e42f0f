"""The cog task's two ways of reading a window, side by side in one process, with CPU accounting.

    python -m bench.cog_paths [--size 7168] [--repeats 3] [--threads 2]

On a private Azurite (on disk), one ``--size``² float32 sample raster in bronze; per repeat,
interleaved: ``convert_tile`` staging the window locally first (``read_directly=False``),
``convert_tile`` letting GDAL's COG driver read it through a VRT over /vsiaz/ (the default), and
GDAL's COG driver from the blob to a local file (the cog_benchmark's ``direct_vsiaz``). For each:
wall seconds, this process's CPU seconds (GDAL, the upload) and Azurite's (serving the reads,
storing the upload), and the task's step timings. CPU seconds hardly move with other load on the
machine, where wall seconds on a shared box do: compare those when the machine is busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import rasterio
from rasterio.shutil import copy as gdal_copy

from bench.measure import log, write_report
from devstack.azurite import AzuriteProcess, start_azurite
from devstack.sample_raster import write_sample_geotiff
from repositories.blob_storage import BlobStorage
from services.raster.cog import CogOptions, cog_creation_options, configure_gdal_block_cache, gdal_config
from services.raster.inspect import inspect_dataset
from services.raster.pipeline import BlobRef, convert_tile
from services.raster.tiling import MIB, TaskMemoryModel, TileWindow

VARIANTS = ("copied", "staged", "direct", "gdal_vsiaz")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace, work: Path, azurite: AzuriteProcess) -> dict[str, Any]:
    storage = BlobStorage(azurite.connection_string)
    storage.ensure_container("bronze")
    storage.ensure_container("silver")
    source = write_sample_geotiff(work / "terrain.tif", width=args.size, height=args.size, seed=1)
    storage.upload_file("bronze", "terrain.tif", source, content_type="image/tiff")
    model = TaskMemoryModel(budget_bytes=1024 * MIB, worker_baseline_bytes=320 * MIB)
    configure_gdal_block_cache(model.gdal_cache_bytes)  # as in the workers
    options = CogOptions(threads=args.threads)
    with rasterio.open(source) as dataset:
        metadata = inspect_dataset(dataset)
    window = TileWindow(0, 0, 0, 0, args.size, args.size)
    variants = tuple(args.variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}

    def one(name: str) -> dict[str, Any]:
        if name == "gdal_vsiaz":
            with storage.gdal_env(**gdal_config(options)):
                gdal_copy(
                    storage.vsiaz_path("bronze", "terrain.tif"),
                    str(work / "direct.tif"),
                    driver="COG",
                    **cog_creation_options(options, metadata.dtype),
                )
            (work / "direct.tif").unlink()
            return {}
        result = convert_tile(
            storage,
            BlobRef("bronze", "terrain.tif"),
            metadata,
            window,
            BlobRef("silver", f"{name}.tif"),
            options,
            conversion_slots=threading.Semaphore(1),
            read_directly=name == "direct",
            copy_whole_source=name == "copied",
        )
        return {"steps_s": result["seconds"], "sha256": result["cog"]["sha256"]}

    for repeat in range(args.repeats):
        for name in variants:
            wall, own, served = time.perf_counter(), time.process_time(), cpu_seconds(azurite.process.pid)
            extra = one(name)
            runs[name].append(
                {
                    "wall_s": round(time.perf_counter() - wall, 3),
                    "cpu_s": round(time.process_time() - own, 3),
                    "azurite_cpu_s": round(cpu_seconds(azurite.process.pid) - served, 3),
                    **extra,
                }
            )
        log(f"repeat {repeat + 1}: " + ", ".join(f"{n} {runs[n][-1]['wall_s']:.2f}s" for n in variants))
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in ("wall_s", "cpu_s", "azurite_cpu_s")}
        for name, rows in runs.items()
    }
    same = len({r["sha256"] for name in variants if name != "gdal_vsiaz" for r in runs[name]}) <= 1
    return {"size": args.size, "threads": args.threads, "runs": runs, "median": medians, "same_cog": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=7168)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="geoetl-cogpaths-") as scratch:
        work = Path(scratch)
        azurite = start_azurite(location=work / "azurite")
        try:
            report = run(args, work, azurite)
        finally:
            azurite.stop()
    path = write_report("cog-paths", report)
    print(f"cog task paths: {args.size}x{args.size} float32, {args.repeats} repeats, {args.threads} GDAL threads")
    print(f"  {'median':<12} {'wall s':>7} {'cpu s':>7} {'azurite cpu s':>14}")
    for name, values in report["median"].items():
        print(f"  {name:<12} {values['wall_s']:7.2f} {values['cpu_s']:7.2f} {values['azurite_cpu_s']:14.2f}")
    print(f"  copied, staged and direct wrote the same COG: {report['same_cog']}; report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
