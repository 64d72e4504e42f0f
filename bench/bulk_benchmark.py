"""process_rasters on many small GeoTIFFs against a direct ``gdal_translate -of COG`` loop, blob → blob.

    python -m bench.bulk_benchmark [--files 500] [--repeats 2] [--workers 2] [--threads 2]

One run, on a private stack (bench/common.py: Azurite on disk, throwaway database, the local host
with ``--workers`` worker processes and the default 1 GiB per-task budget):

1. Writes 40 distinct small GeoTIFFs (256² to 1024² px; uint8 RGB, uint16, int16 and float32; half
   deflate-compressed, half not) and uploads ``--files`` blobs to bronze, each one of them chosen
   in turn (``bench-bulk/<token>/f00000.tif``…).
2. Repeats, interleaved so machine noise hits both alike:
   - **direct**: the same blobs converted by Debian's ``gdal_translate`` (gdal-bin), one process per
     file, ``--workers`` of them at a time (to match the host's worker processes), each
     ``gdal_translate -q -of COG -co COMPRESS=DEFLATE -co LEVEL=6 -co PREDICTOR=<2|3> -co BLOCKSIZE=512
     -co OVERVIEW_RESAMPLING=<as process_rasters picks: mode for categorical, average otherwise>
     -co NUM_THREADS=<--threads> -co BIGTIFF=IF_SAFER /vsiaz/bronze/<blob> /vsiaz/silver/direct-<n>/<blob>``
     with the stack's connection string, GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR and
     CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE=YES in its environment (the COG is written through a local
     temporary file and uploaded when closed). Nothing else: no validation, no STAC.
   - **in process** (a stricter baseline, reported beside it): the same conversions with the rasterio
     wheel's GDAL (``rasterio.shutil.copy(..., driver="COG")``, same options), ``--workers`` threads
     of the benchmark's own process: no process start per file.
   - **process_rasters**: one job over the prefix submitted over HTTP (a new collection id each time,
     so a new job) and polled to its end: list, validate every file, convert in batches (each COG
     checked with rio-cogeo and its sha256 recorded), one STAC collection.
   Both report files/s from first start to last end; the ratio is ours / direct (target >= 0.8).
3. Per-task peak RSS: every convert task reports its process's peak while it ran, and this script
   samples the worker processes (/proc/<pid>/status every 50 ms); the largest of either is reported
   (target <= 1 GiB).

Prints the figures and writes them to bench/out/bulk-benchmark-<UTC>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import from_origin

from bench import common, measure
from bench.cog_benchmark import job_tasks
from bench.task_memory import ProcessRssSampler, parse_time, per_task_memory
from repositories.blob_storage import BlobStorage
from services.raster.cog import CogOptions, cog_creation_options, default_overview_resampling
from services.raster.inspect import inspect_dataset
from services.raster.tiling import MIB

GIB = 1024 * MIB
SIDES = (256, 384, 512, 768, 1024)
KINDS = ("uint8_rgb", "uint16", "int16", "float32")
TARGET_RATIO = 0.8


def write_template(path: Path, side: int, kind: str, compress: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    surface = 500 + 300 * np.sin(x / 37.0) * np.cos(y / 53.0) + rng.normal(0, 5, (side, side))
    if kind == "uint8_rgb":
        data = np.stack([(surface / 4 + shift) % 256 for shift in (0, 60, 120)]).astype("uint8")
    elif kind == "uint16":
        data = (surface * 20).clip(0, 65535).astype("uint16")[None]
    elif kind == "int16":
        data = (surface - 600).astype("int16")[None]
    else:
        data = surface.astype("float32")[None]
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(500_000 + seed * 10_000, 6_000_000, 10, 10),
    }
    if kind == "uint8_rgb":
        profile["photometric"] = "RGB"
    if compress:
        profile.update(compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)


def templates(work: Path) -> list[tuple[Path, dict[str, str]]]:
    """40 distinct small rasters, each with the creation options process_rasters would use for it."""
    made = []
    seed = 0
    for side in SIDES:
        for kind in KINDS:
            for compress in (False, True):
                seed += 1
                path = work / f"t{seed:02d}.tif"
                write_template(path, side, kind, compress, seed)
                with rasterio.open(path) as dataset:
                    metadata = inspect_dataset(dataset)
                options = CogOptions(overview_resampling=default_overview_resampling(metadata), threads=THREADS[0])
                made.append((path, cog_creation_options(options, metadata.dtype)))
    return made


THREADS = [2]  # GDAL threads (set from --threads before the templates are made)


def upload_files(storage: BlobStorage, prefix: str, count: int, made: list[tuple[Path, dict[str, str]]]) -> list[Any]:
    storage.ensure_container("bronze")
    storage.ensure_container("silver")
    data = [path.read_bytes() for path, _ in made]

    def upload(index: int) -> tuple[str, dict[str, str], int]:
        which = index % len(made)
        name = f"{prefix}f{index:05d}.tif"
        storage.upload_bytes("bronze", name, data[which], content_type="image/tiff")
        return name, made[which][1], len(data[which])

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(upload, range(count)))


def direct_loop(storage: BlobStorage, files: list[Any], repeat: int, workers: int) -> dict[str, Any]:
    """``gdal_translate -of COG`` per blob, ``workers`` processes at a time, blob → blob."""
    env = {
        **os.environ,
        **storage.gdal_options(),
        "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }

    def convert(item: tuple[str, dict[str, str], int]) -> float:
        name, creation, _ = item
        options = [arg for key, value in creation.items() for arg in ("-co", f"{key}={value}")]
        started = time.perf_counter()
        subprocess.run(
            [
                "gdal_translate",
                "-q",
                "-of",
                "COG",
                *options,
                f"/vsiaz/bronze/{name}",
                f"/vsiaz/silver/direct-{repeat}/{name}",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        per_file = list(pool.map(convert, files))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "files_per_s": len(files) / elapsed, "median_file_s": statistics.median(per_file)}


def in_process_loop(storage: BlobStorage, files: list[Any], repeat: int, workers: int) -> dict[str, Any]:
    """The same conversions without a process per file: the rasterio wheel's GDAL COG driver
    (``rasterio.shutil.copy``), ``workers`` threads of this process, blob → blob."""
    env = {**storage.gdal_options(), "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES"}

    def convert(item: tuple[str, dict[str, str], int]) -> float:
        name, creation, _ = item
        started = time.perf_counter()
        with rasterio.Env(**env):
            gdal_copy(f"/vsiaz/bronze/{name}", f"/vsiaz/silver/inproc-{repeat}/{name}", driver="COG", **creation)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        per_file = list(pool.map(convert, files))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "files_per_s": len(files) / elapsed, "median_file_s": statistics.median(per_file)}


def run_job(base_url: str, prefix: str, repeat: int, timeout: float, sampler: ProcessRssSampler) -> dict[str, Any]:
    params = {"prefix": prefix, "collection_id": f"bench-bulk-{repeat}"}
    started = time.perf_counter()
    submitted = measure.submit_job(base_url, "process_rasters", params)
    job = measure.wait_for_job(base_url, submitted["job_id"], timeout=timeout, poll_interval=0.1)
    elapsed = time.perf_counter() - started
    if job["status"] != "completed":
        raise RuntimeError(f"job {submitted['job_id']} ended {job['status']}: {job.get('error')}")
    tasks = job_tasks(base_url, submitted["job_id"])
    files = job["result"]["files"]["converted"]
    by_stage: dict[str, float] = {}
    for stage, name in enumerate(("list", "inspect", "convert", "catalog"), start=1):
        of_stage = [t for t in tasks if t["stage"] == stage]
        by_stage[name] = round(
            max(parse_time(t["completed_at"]) for t in of_stage) - min(parse_time(t["started_at"]) for t in of_stage), 3
        )
    memory = per_task_memory({"tasks": tasks}, sampler)
    peaks = [max(t.get("peak_rss_sampled_mib") or 0, t.get("peak_rss_reported_mib") or 0) for t in memory]
    return {
        "job_id": submitted["job_id"],
        "seconds": elapsed,
        "files_per_s": files / elapsed,
        "files": files,
        "convert_tasks": sum(1 for t in tasks if t["stage"] == 3),
        "stage_spans_s": by_stage,
        "max_task_peak_rss_mib": max(peaks),
        "convert_task_seconds": [t["seconds"] for t in memory if t["stage"] == 3],
    }


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    THREADS[0] = args.threads
    made = templates(work)
    token = measure.unique_token()
    prefix = f"bench-bulk/{token}/"
    report: dict[str, Any] = {
        "files": args.files,
        "workers": args.workers,
        "gdal_threads": args.threads,
        "cpus": os.cpu_count(),
        "gdal_translate": subprocess.run(
            ["gdal_translate", "--version"], check=True, capture_output=True, text=True
        ).stdout.strip(),
        "machine_before": measure.background_cpu(),
    }
    with common.running_stack(work / "stack", db_prefix="geoetl_bulkbench", azurite_in_memory=False) as stack:
        storage = BlobStorage(stack.storage_connection_string)
        files = upload_files(storage, prefix, args.files, made)
        report["input_bytes"] = sum(size for _, _, size in files)
        common.log(f"uploaded {len(files)} files ({report['input_bytes'] / 1e6:.0f} MB)")
        # A warm-up job on a few files: worker imports and GDAL drivers loaded before measuring.
        upload_files(storage, f"bench-bulk/{token}-warmup/", 8, made)
        settings = stack.app_settings(GDAL_THREADS=str(args.threads), LOG_LEVEL="WARNING")
        log_file = common.OUT_DIR / f"bulk-benchmark-host-{common.utc_stamp()}.log"
        with (
            common.running_host(stack, workers=args.workers, log_file=log_file, settings=settings) as host,
            ProcessRssSampler(host) as sampler,
        ):
            measure.wait_for_job(
                host.base_url,
                measure.submit_job(host.base_url, "process_rasters", {"prefix": f"bench-bulk/{token}-warmup/"})[
                    "job_id"
                ],
                timeout=args.timeout,
            )
            direct: list[dict[str, Any]] = []
            in_process: list[dict[str, Any]] = []
            ours: list[dict[str, Any]] = []
            for repeat in range(args.repeats):
                measure.wait_until_quiet()
                direct.append(direct_loop(storage, files, repeat, args.workers))
                if not args.no_in_process:
                    measure.wait_until_quiet()
                    in_process.append(in_process_loop(storage, files, repeat, args.workers))
                measure.wait_until_quiet()
                ours.append(run_job(host.base_url, prefix, repeat, args.timeout, sampler))
                inproc = f"in-process {in_process[-1]['files_per_s']:.1f} files/s, " if in_process else ""
                common.log(
                    f"repeat {repeat + 1}: direct {direct[-1]['files_per_s']:.1f} files/s, {inproc}"
                    f"process_rasters {ours[-1]['files_per_s']:.1f} files/s "
                    f"({ours[-1]['convert_tasks']} convert tasks, stages {ours[-1]['stage_spans_s']})"
                )
    direct_fps = statistics.median(r["files_per_s"] for r in direct)
    ours_fps = statistics.median(r["files_per_s"] for r in ours)
    report.update(
        {
            "direct": direct,
            "process_rasters": ours,
            "median_files_per_s": {"direct": direct_fps, "process_rasters": ours_fps},
            "ratio": ours_fps / direct_fps,
            "in_process": in_process,
            "ratio_to_in_process": (
                ours_fps / statistics.median(r["files_per_s"] for r in in_process) if in_process else None
            ),
            "target_ratio": TARGET_RATIO,
            "max_task_peak_rss_mib": max(r["max_task_peak_rss_mib"] for r in ours),
            "machine_after": measure.background_cpu(),
        }
    )
    return report


def print_report(report: dict[str, Any]) -> None:
    fps = report["median_files_per_s"]
    print(
        f"Bulk benchmark: {report['files']} small GeoTIFFs ({report['input_bytes'] / 1e6:.0f} MB), "
        f"{report['cpus']} CPUs, {report['workers']} workers / parallel gdal_translate processes, "
        f"{report['gdal_threads']} GDAL threads; {report['gdal_translate']}"
    )
    for n, (direct, ours) in enumerate(zip(report["direct"], report["process_rasters"], strict=True), start=1):
        print(
            f"  repeat {n}: direct loop {direct['seconds']:6.1f} s = {direct['files_per_s']:5.1f} files/s | "
            f"process_rasters {ours['seconds']:6.1f} s = {ours['files_per_s']:5.1f} files/s "
            f"({ours['convert_tasks']} convert tasks; stage spans {ours['stage_spans_s']})"
        )
    print(
        f"  median files/s: direct {fps['direct']:.1f}, process_rasters {fps['process_rasters']:.1f}; "
        f"ratio {report['ratio']:.2f} (target >= {report['target_ratio']})"
    )
    if report["in_process"]:
        inproc = statistics.median(r["files_per_s"] for r in report["in_process"])
        print(
            f"  stricter baseline, no process per file (the wheel's GDAL in {report['workers']} threads): "
            f"{inproc:.1f} files/s; process_rasters / it = {report['ratio_to_in_process']:.2f}"
        )
    print(f"  largest per-task peak RSS: {report['max_task_peak_rss_mib']} MiB (target <= 1024 MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="GDAL threads (GDAL_THREADS, -co NUM_THREADS)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument(
        "--no-in-process",
        action="store_true",
        help="skip the in-process baseline (GDAL in threads, no process per file)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temp dir)")
    args = parser.parse_args(argv)
    if shutil.which("gdal_translate") is None:
        parser.error("gdal_translate (Debian's gdal-bin) is not installed")
    common.sigterm_as_keyboard_interrupt()
    work = Path(tempfile.mkdtemp(prefix="geoetl-bulkbench-", dir=args.work_dir))
    try:
        report = benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = measure.write_report("bulk-benchmark", report)
    print_report(report)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
