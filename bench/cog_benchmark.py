"""process_raster's COG conversion against GDAL's COG driver on the same input, and per-task memory.

    python -m bench.cog_benchmark [--size 7168] [--repeats 3] [--big-size 28672] [--no-big] [--warp-size 8192]
                                  [--workers 2] [--threads 2] [--baselines direct_vsiaz ...]

One run, on a private stack (bench/common.py: Azurite on disk, throwaway database, the local host
with ``--workers`` workers and the default 1 GiB per-task budget):

1. Generates a terrain-like float32 GeoTIFF (devstack/sample_raster.py; ``--size`` px a side, at
   least 128 MB) and uploads it to bronze.
2. Repeats, interleaved so machine noise hits both alike: ``rasterio.shutil.copy(..., driver="COG")``
   with the options process_raster uses (deflate level 6, floating-point predictor, 512 px blocks,
   average overviews, GDAL threads and cache), from the local file and from the same blob through
   /vsiaz/, each to a local file; and a process_raster job submitted over HTTP and polled to its end.
   The cog stage's time is its tasks' span in Postgres (first start to last completion); each run
   records the load average it started at, each job its cog task's steps; odd repeats run the job
   first. ``--baselines`` picks the direct runs.
3. Converts a raster of at least 3 GB uncompressed (``--big-size``) and reports every task's peak
   RSS twice: as the task measured it (a sampling thread in the worker) and as this script sampled
   the worker process (/proc/<pid>/status every 50 ms) while the task ran.
4. The same for a ``--warp-size``² raster warped to EPSG:4326 (every cog task reads a GDAL warped
   VRT while it stages its window).

Prints the figures and writes them to bench/out/cog-benchmark-<UTC>.json.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rasterio
from rasterio.shutil import copy as gdal_copy

from bench import common, measure
from bench.task_memory import ProcessRssSampler, parse_time, per_task_memory
from devstack.sample_raster import write_sample_geotiff
from repositories.blob_storage import BlobStorage
from services.raster.cog import CogOptions, cog_creation_options, configure_gdal_block_cache, gdal_config
from services.raster.tiling import MIB, TaskMemoryModel

GIB = 1024 * MIB
BUDGET = GIB
BASELINES = {
    "direct_local": "direct COG driver, local file -> local file",
    "direct_vsiaz": "direct COG driver, /vsiaz/ blob -> local file",
    "direct_blob_to_blob": "direct COG driver, /vsiaz/ blob -> blob",
}
OURS = {
    "cog_stage": "geoetl cog stage (blob -> validated COG blob)",
    "submit_to_completed": "geoetl submit -> completed (4 stages over HTTP)",
}
# The targets, against a direct conversion of the same input (the same blob).
TARGETS = {"cog_stage/direct_vsiaz": 1.15, "submit_to_completed/direct_vsiaz": 1.5}


def cog_options(threads: int) -> CogOptions:
    """What process_raster uses for continuous float data with the default settings (and the same
    GDAL block cache in this process as in the workers)."""
    configure_gdal_block_cache(TaskMemoryModel(budget_bytes=BUDGET, worker_baseline_bytes=320 * MIB).gdal_cache_bytes)
    return CogOptions(compression="deflate", overview_resampling="average", threads=threads)


def direct_conversion(source: str, destination: Path, env: dict[str, Any], options: CogOptions) -> float:
    started = time.perf_counter()
    with rasterio.Env(**env):
        gdal_copy(source, str(destination), driver="COG", **cog_creation_options(options, "float32"))
    elapsed = time.perf_counter() - started
    destination.unlink()
    return elapsed


def job_tasks(base_url: str, job_id: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = f"?limit=200{'&cursor=' + cursor if cursor else ''}"
        status, page = measure.http_json("GET", f"{base_url}/api/jobs/{job_id}/tasks{query}")
        if status != 200:
            raise RuntimeError(f"listing tasks of {job_id}: HTTP {status} {page}")
        tasks += page["tasks"]
        cursor = page.get("next_cursor")
        if not cursor:
            return tasks


def run_job(base_url: str, parameters: dict[str, Any], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    submitted = measure.submit_job(base_url, "process_raster", parameters)
    job = measure.wait_for_job(base_url, submitted["job_id"], timeout=timeout, poll_interval=0.1)
    elapsed = time.perf_counter() - started
    if job["status"] != "completed":
        raise RuntimeError(f"job {submitted['job_id']} ended {job['status']}: {job.get('error')}")
    tasks = job_tasks(base_url, submitted["job_id"])
    cog_tasks = [t for t in tasks if t["stage"] == 3]
    first_start = min(parse_time(t["started_at"]) for t in cog_tasks)
    last_cog = max(parse_time(t["completed_at"]) for t in cog_tasks)
    first_task = min(parse_time(t["started_at"]) for t in tasks)
    # Where a job's time goes besides the cog stage (Postgres timestamps).
    timeline = {
        "created_to_first_task_s": first_task - parse_time(job["created_at"]),
        "first_task_to_cog_start_s": first_start - first_task,
        "cog_stage_s": last_cog - first_start,
        "cog_end_to_completed_s": parse_time(job["completed_at"]) - last_cog,
    }
    return {
        "job_id": submitted["job_id"],
        "submit_to_completed_s": elapsed,
        "cog_stage_s": last_cog - first_start,
        "timeline_s": {name: round(value, 3) for name, value in timeline.items()},
        "tasks": tasks,
    }


def cog_task_steps(job: dict[str, Any]) -> dict[str, float]:
    """The cog stage's task's steps (the slowest task's, for a tiled source) and its own span."""
    task = max((t for t in job["tasks"] if t["stage"] == 3), key=lambda t: parse_time(t["completed_at"]))
    span = parse_time(task["completed_at"]) - parse_time(task["started_at"])
    return {**((task["result"] or {}).get("seconds") or {}), "task_s": round(span, 3)}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    options = cog_options(args.threads)
    report: dict[str, Any] = {
        "options": cog_creation_options(options, "float32"),
        "budget_bytes": BUDGET,
        "workers": args.workers,
        "gdal_threads": args.threads,
        "cpus": os.cpu_count(),
        "machine_before": measure.background_cpu(),
    }
    # Azurite on disk: the big run puts several GB of blobs in it.
    with common.running_stack(work / "stack", db_prefix="geoetl_cogbench", azurite_in_memory=False) as stack:
        storage = BlobStorage(stack.storage_connection_string)
        storage.ensure_container("bronze")
        settings = stack.app_settings(
            RASTER_TASK_MEMORY_BUDGET_BYTES=str(BUDGET), GDAL_THREADS=str(options.threads), LOG_LEVEL="WARNING"
        )
        log_file = common.OUT_DIR / f"cog-benchmark-host-{common.utc_stamp()}.log"
        with common.running_host(stack, workers=args.workers, log_file=log_file, settings=settings) as host:
            report["comparison"] = compare(args, work, stack, storage, host, options)
            if not args.no_big:
                report["big"] = big_raster(args, work, storage, host)
            if args.warp_size:
                report["warped"] = warped_raster(args, work, storage, host)
    report["machine_after"] = measure.background_cpu()
    return report


def compare(
    args: argparse.Namespace,
    work: Path,
    stack: common.Stack,
    storage: BlobStorage,
    host: common.HostProcess,
    options: CogOptions,
) -> dict[str, Any]:
    source = write_sample_geotiff(work / "terrain.tif", width=args.size, height=args.size, seed=1)
    blob = f"bench/terrain-{args.size}.tif"
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    raw_mb = args.size**2 * 4 / 1e6
    common.log(
        f"input {source.stat().st_size / 1e6:.0f} MB file ({args.size}x{args.size} float32, {raw_mb:.0f} MB raw)"
    )
    env_local = gdal_config(options)
    env_remote = {**storage.gdal_options(), **env_local}
    # GDAL writes a COG to /vsiaz/ through a local temporary file, uploaded when it is closed.
    env_blob_to_blob = {**env_remote, "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES"}
    runs: dict[str, list[float]] = {name: [] for name in [*args.baselines, *OURS]}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    loads: dict[str, list[float]] = {name: [] for name in runs}  # 1-min load average as each run started
    account = measure.CpuAccount(
        {
            "azurite": lambda: [stack.azurite.process.pid] if stack.azurite else [],
            "host": lambda: [host.process.pid, *common.worker_pids(host)],
        }
    )

    def measured(name: str, action: Callable[[], float]) -> float:
        """Run one variant from an idle machine, recording its seconds and the CPU it used."""
        measure.wait_until_quiet()
        loads[name].append(round(os.getloadavg()[0], 2))
        account.start()
        seconds = action()
        cpu[name].append(account.stop())
        runs[name].append(seconds)
        return seconds

    def blob_to_blob() -> float:
        started = time.perf_counter()
        with rasterio.Env(**env_blob_to_blob):
            gdal_copy(remote, storage.vsiaz_path("silver", "bench/direct.tif"), driver="COG", **creation)
        return time.perf_counter() - started

    def one_job(collection_id: str) -> float:
        jobs.append(run_job(host.base_url, {"blob_name": blob, "collection_id": collection_id}, timeout=args.timeout))
        return float(jobs[-1]["submit_to_completed_s"])

    remote = storage.vsiaz_path("bronze", blob)
    creation = cog_creation_options(options, "float32")
    jobs: list[dict[str, Any]] = []
    run_job(host.base_url, {"blob_name": blob, "collection_id": "bench-warmup"}, timeout=args.timeout)  # warm-up
    baselines: dict[str, Callable[[], float]] = {
        "direct_local": lambda: direct_conversion(str(source), work / "direct.tif", env_local, options),
        "direct_vsiaz": lambda: direct_conversion(remote, work / "direct.tif", env_remote, options),
        "direct_blob_to_blob": blob_to_blob,
    }
    steps: list[dict[str, float]] = []  # the cog task's steps (services/raster/pipeline.py), per repeat
    for repeat in range(args.repeats):
        # Alternate the order too, so a trend in the machine's load does not favour one side.
        order = [*args.baselines, "job"] if repeat % 2 == 0 else ["job", *args.baselines]
        for name in order:
            if name != "job":
                measured(name, baselines[name])
                continue
            measured("submit_to_completed", functools.partial(one_job, f"bench-{repeat}"))
            job = jobs[-1]
            runs["cog_stage"].append(job["cog_stage_s"])
            cpu["cog_stage"].append(cpu["submit_to_completed"][-1])  # one account covers the whole job
            loads["cog_stage"].append(loads["submit_to_completed"][-1])
            steps.append(cog_task_steps(job))
        common.log(
            f"repeat {repeat + 1}: "
            + ", ".join(f"{name} {runs[name][-1]:.2f}s" for name in args.baselines)
            + f", cog stage {job['cog_stage_s']:.2f}s (steps {steps[-1]}), job {job['submit_to_completed_s']:.2f}s; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
    medians = {name: median(values) for name, values in runs.items()}
    fastest = {name: min(values) for name, values in runs.items()}
    return {
        "input": {"blob": blob, "bytes": source.stat().st_size, "width": args.size, "height": args.size},
        "runs_s": runs,
        # CPU seconds per run, from an idle start: this benchmark's process is "other" (it runs the
        # direct conversions), Azurite serves and stores the blobs, the host runs the job.
        "cpu_s": cpu,
        "median_cpu_s": {
            name: {k: median([c[k] for c in runs_cpu]) for k in runs_cpu[0]} for name, runs_cpu in cpu.items()
        },
        "median_s": medians,
        "min_s": fastest,
        "load_1m": loads,
        "cog_task_steps_s": steps,
        "median_cog_task_steps_s": {name: median([s[name] for s in steps if name in s]) for name in steps[0]},
        "ratios": {
            f"{ours}/{baseline}": {
                "median": medians[ours] / medians[baseline],
                "min": fastest[ours] / fastest[baseline],
                # Per repeat, each against the baseline run next to it.
                "per_repeat": [round(a / b, 3) for a, b in zip(runs[ours], runs[baseline], strict=True)],
            }
            for ours in OURS
            for baseline in args.baselines
        },
        "last_job_tasks": per_task_memory(jobs[-1], None),
        "job_timelines_s": [job["timeline_s"] for job in jobs],
    }


def big_raster(
    args: argparse.Namespace,
    work: Path,
    storage: BlobStorage,
    host: common.HostProcess,
    *,
    size: int | None = None,
    name: str = "big",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert a ``size``² float32 raster (``--big-size``) while sampling the workers' RSS; ``extra``
    job parameters (``warped_raster``: a target CRS)."""
    size = size or args.big_size
    started = time.perf_counter()
    source = write_sample_geotiff(work / f"{name}.tif", width=size, height=size, seed=2)
    took = time.perf_counter() - started
    common.log(f"{name} input generated in {took:.0f}s: {source.stat().st_size / 1e9:.2f} GB file")
    blob = f"bench/{name}-{size}.tif"
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    source.unlink()
    parameters = {"blob_name": blob, "collection_id": f"bench-{name}", **(extra or {})}
    with ProcessRssSampler(host) as sampler:
        job = run_job(host.base_url, parameters, timeout=args.big_timeout)
    tasks = per_task_memory(job, sampler)
    worker_peaks = {pid: ProcessRssSampler.status_field(pid, "VmHWM") for pid in common._worker_pids(host)}
    return {
        "input": {"blob": blob, "width": size, "height": size, "raw_bytes": size**2 * 4, **(extra or {})},
        "tiles": sum(1 for t in tasks if t["stage"] == 3),
        "submit_to_completed_s": job["submit_to_completed_s"],
        "cog_stage_s": job["cog_stage_s"],
        "tasks": tasks,
        "worker_lifetime_peak_rss_mib": {str(pid): round(v / MIB) if v else None for pid, v in worker_peaks.items()},
        "max_task_peak_rss_mib": max(
            max(t.get("peak_rss_sampled_mib") or 0, t.get("peak_rss_reported_mib") or 0) for t in tasks
        ),
    }


def warped_raster(
    args: argparse.Namespace, work: Path, storage: BlobStorage, host: common.HostProcess
) -> dict[str, Any]:
    """The sample raster (UTM 33N) warped to EPSG:4326: every cog task reads a GDAL warped VRT."""
    return big_raster(args, work, storage, host, size=args.warp_size, name="warped", extra={"target_crs": "EPSG:4326"})


def print_memory(title: str, big: dict[str, Any]) -> None:
    print(f"{title}: {big['input']['width']}x{big['input']['height']} float32 "
          f"({big['input']['raw_bytes'] / 1e9:.2f} GB uncompressed), {big['tiles']} tiles, "
          f"job {big['submit_to_completed_s']:.0f} s, cog stage {big['cog_stage_s']:.0f} s")  # fmt: skip
    print("  stage task            seconds (waited for a slot)  peak RSS: task's own sampler / this script's")
    for task in big["tasks"]:
        own, sampled = task["peak_rss_reported_mib"] or "-", task.get("peak_rss_sampled_mib") or "-"
        waited = (task["steps_s"] or {}).get("waited_for_slot")
        waited_text = f"({waited:5.1f})" if waited is not None else " " * 7
        staged = f"  staged: {task['staged_because']}" if task.get("staged_because") else ""
        print(f"  {task['stage']:>5} {task['task']:<15} {task['seconds']:7.1f} {waited_text}  "
              f"{own:>5} MiB / {sampled:>5} MiB{staged}")  # fmt: skip
    print(f"  largest per-task peak: {big['max_task_peak_rss_mib']} MiB (target <= 1024 MiB); "
          f"worker processes' lifetime peaks (VmHWM): {big['worker_lifetime_peak_rss_mib']} MiB")  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    comparison = report["comparison"]
    size = comparison["input"]
    print(f"COG benchmark: {size['width']}x{size['height']} float32 ({size['bytes'] / 1e6:.0f} MB file), "
          f"{len(comparison['runs_s']['cog_stage'])} repeats, {report['cpus']} CPUs, {report['workers']} workers; "
          f"options {report['options']}")  # fmt: skip
    print(f"  {'seconds':<52} {'median':>7} {'min':>7}")
    shown = {name: label for name, label in {**BASELINES, **OURS}.items() if name in comparison["median_s"]}
    for name, label in shown.items():
        loads = comparison["load_1m"][name]
        print(f"  {label:<52} {comparison['median_s'][name]:7.2f} {comparison['min_s'][name]:7.2f}"
              f"  (load average {min(loads):.2f}-{max(loads):.2f})")  # fmt: skip
    print(f"  {'CPU seconds per run (median; direct runs are in other)':<52} {'azurite':>7} {'host':>7} {'other':>7}")
    for name, label in shown.items():
        used = comparison["median_cpu_s"][name]
        print(f"  {label:<52} {used['azurite']:7.2f} {used['host']:7.2f} {used['other']:7.2f}")
    print(f"  {'ratio':<52} {'median':>7} {'min':>7}")
    for key, ratio in comparison["ratios"].items():
        ours, baseline = key.split("/")
        target = TARGETS.get(key)
        label = f"{ours} / {baseline}"
        note = f"  (target <= {target})" if target else ""
        print(f"  {label:<52} {ratio['median']:7.2f} {ratio['min']:7.2f}{note}")
        print(f"    per repeat: {ratio['per_repeat']}")
    print(f"  cog task steps (median s): {comparison['median_cog_task_steps_s']}")
    for task in comparison["last_job_tasks"]:
        if task["stage"] == 3:
            print(f"  cog task {task['task']}: {task['seconds']:.2f} s, steps {task['steps_s']}")
    timelines = comparison["job_timelines_s"]
    spans = {name: median([t[name] for t in timelines]) for name in timelines[0]}
    print("  job timeline (median s): " + ", ".join(f"{name.removesuffix('_s')} {v:.2f}" for name, v in spans.items()))
    if report.get("big"):
        print_memory("Big raster", report["big"])
    if report.get("warped"):
        print_memory("Warped raster (to EPSG:4326)", report["warped"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=7168, help="side of the comparison input (float32), px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-size", type=int, default=28_672, help="side of the >= 3 GB input (float32), px")
    parser.add_argument("--no-big", action="store_true", help="skip the big-raster memory run")
    parser.add_argument(
        "--warp-size", type=int, default=8192, help="side of the warped memory run's input (float32), px; 0 skips it"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--baselines", nargs="+", choices=list(BASELINES), default=list(BASELINES), help="direct runs to compare with"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="GDAL threads, for the direct runs and the workers (GDAL_THREADS)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per comparison job")
    parser.add_argument("--big-timeout", type=float, default=3600.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.size**2 * 4 < 128 * 10**6:
        parser.error("--size must give at least 128 MB of float32")
    common.sigterm_as_keyboard_interrupt()
    work = Path(tempfile.mkdtemp(prefix="geoetl-cogbench-", dir=args.work_dir))
    try:
        report = benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = measure.write_report("cog-benchmark", report)
    print_report(report)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
