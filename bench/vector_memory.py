"""Peak RSS per task of stage_vector and export_geoparquet on a GeoPackage of 2 GiB or more.

    python -m bench.vector_memory [--min-bytes 2147483648] [--workers 2] [--work-dir DIR]
        [--batch 100000] [--timeout 5400] [--max-parallel-tasks 1,0] [--delete-source]

One run, on a private stack (bench/common.py: Azurite on disk, a throwaway database with PostGIS,
the local host with ``--workers`` workers):

1. Writes polygons (bench/vector_benchmark.write_parcels: 12-gons, EPSG:2056, six attributes) to
   ``<work-dir>/parcels-<min-bytes>.gpkg`` in appended batches of ``--batch`` features until the file
   holds ``--min-bytes`` (about 5.8 M features for 2 GiB); the generator holds one batch at a time.
   The file is cached: a re-run with the same ``--work-dir`` and ``--min-bytes`` reuses it
   (``--delete-source`` removes it at the end). Uploads it to bronze.
2. Per ``--max-parallel-tasks`` value n: one stage_vector job with the default options (→
   ``ours.parcels_p<n>``), then one export_geoparquet job of that table (default options → silver),
   each submitted over HTTP with the job option ``max_parallel_tasks`` n (0: unbounded, the engine's
   default) and polled to its end, while every worker process's RSS is sampled every 50 ms
   (bench/task_memory.ProcessRssSampler). A worker runs several tasks at once (host.json batchSize
   16 + newBatchThreshold 8) and they share its RSS: with n = 1 each task's peak is its own (plus
   the worker's baseline); unbounded, it is its worker's peak while the others beside it ran.

Reports per job: wall seconds (submit → completed), features/s, each stage's span, and per task its
seconds, its peak RSS as the task measured it (``peak_rss_bytes``), as sampled from its worker (its
``process_id``; for a task that reports no pid, the worker whose RSS rose most over its span), its
worker's RSS when it began, how many tasks ran beside it in its worker, and its phases; the largest
task's RSS per second.
Target (issue 14): peak RSS per task ≤ 1 GiB. Writes bench/out/vector-memory-<UTC>.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pyogrio

from bench import common, measure
from bench.cog_benchmark import job_tasks
from bench.task_memory import ProcessRssSampler, parse_time
from bench.vector_benchmark import write_parcels
from repositories.blob_storage import BlobStorage

MIB = 1024 * 1024
GIB = 1024 * MIB
RSS_LIMIT = 1 * GIB
JOBS = ("stage_vector", "export_geoparquet")
STAGE_NAMES = {
    "stage_vector": {1: "inspect", 2: "load", 3: "swap"},
    "export_geoparquet": {1: "plan", 2: "write", 3: "assemble"},
}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_source(work_dir: Path, min_bytes: int, batch: int) -> tuple[Path, int]:
    """The cached GeoPackage of at least ``min_bytes`` (written in appended batches when missing)."""
    path = work_dir / f"parcels-{min_bytes}.gpkg"
    if not path.exists():
        partial = work_dir / f"parcels-{min_bytes}.partial.gpkg"
        partial.unlink(missing_ok=True)
        written, started = 0, time.perf_counter()
        while not partial.exists() or partial.stat().st_size < min_bytes:
            write_parcels(partial, batch, seed=1 + written // batch, first=written, append=written > 0)
            written += batch
            if written % (10 * batch) == 0:
                common.log(f"  {written} features, {partial.stat().st_size / GIB:.2f} GiB")
        partial.rename(path)
        common.log(f"wrote {written} features in {time.perf_counter() - started:.0f} s")
    features = int(pyogrio.read_info(path, layer="parcels")["features"])
    return path, features


def _samples_between(sampler: ProcessRssSampler, start: float, end: float) -> dict[int, list[tuple[float, int]]]:
    per_pid: dict[int, list[tuple[float, int]]] = {}
    for t, pid, rss in sampler.samples:
        if start <= t <= end:
            per_pid.setdefault(pid, []).append((t, rss))
    return per_pid


def task_memory(task: dict[str, Any], sampler: ProcessRssSampler, stage_name: str) -> dict[str, Any]:
    result = task["result"] or {}
    start, end = parse_time(task["started_at"]), parse_time(task["completed_at"])
    per_pid = _samples_between(sampler, start, end)
    pid = result.get("process_id")
    if pid:
        own = per_pid.get(int(pid), [])
        source = "own worker"
    else:  # the task does not say which worker ran it: the one whose RSS rose most over its span
        own = max(per_pid.values(), key=lambda s: (max(r for _, r in s) - s[0][1], max(r for _, r in s)), default=[])
        source = "worker whose RSS rose most (task reports no pid)"
    reported = result.get("peak_rss_bytes")
    return {
        "stage": f"{task['stage']} {stage_name}",
        "task": task["task_key"],
        "process_id": pid,
        "span": (start, end),
        "seconds": round(end - start, 2),
        "peak_rss_reported_mib": round(reported / MIB) if reported else None,
        "peak_rss_sampled_mib": round(max(r for _, r in own) / MIB) if own else None,
        "sampled_from": source,
        "rss_at_start_mib": round(own[0][1] / MIB) if own else None,
        "phase_seconds": result.get("phase_seconds") or result.get("read_seconds"),
        "_series": [(round(t - start, 2), r) for t, r in own],
    }


def _per_second(series: list[tuple[float, int]]) -> list[int]:
    """The largest RSS (MiB) in each second of a task."""
    seconds: dict[int, int] = {}
    for offset, rss in series:
        seconds[int(offset)] = max(seconds.get(int(offset), 0), rss)
    return [round(seconds[s] / MIB) for s in sorted(seconds)]


def run_job(
    host: common.HostProcess,
    sampler: ProcessRssSampler,
    job_type: str,
    parameters: dict[str, Any],
    features: int,
    timeout: float,
    max_parallel_tasks: int,
) -> dict[str, Any]:
    measure.wait_until_quiet(timeout=10)
    load_before = _loadavg()
    started = time.perf_counter()
    options = {"max_parallel_tasks": max_parallel_tasks} if max_parallel_tasks else {}
    submitted = measure.submit_job(host.base_url, job_type, {**parameters, **options})
    job = measure.wait_for_job(host.base_url, submitted["job_id"], timeout=timeout, poll_interval=1.0)
    seconds = time.perf_counter() - started
    if job["status"] != "completed":
        raise RuntimeError(f"{job_type} job ended {job['status']}: {job.get('error')}")
    tasks = job_tasks(host.base_url, submitted["job_id"])
    names = STAGE_NAMES[job_type]
    rows = [task_memory(t, sampler, names.get(int(t["stage"]), "?")) for t in tasks]
    rows.sort(key=lambda r: (r["stage"], r["task"]))
    for row in rows:  # tasks of the same worker running beside it: they share its RSS
        row["beside_in_same_worker"] = sum(
            1
            for other in rows
            if other is not row
            and other["process_id"] == row["process_id"] is not None
            and other["span"][0] < row["span"][1]
            and row["span"][0] < other["span"][1]
        )
    stages: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = stages.setdefault(row["stage"], {"tasks": 0, "peak_rss_mib": 0})
        entry["tasks"] += 1
        peak = max(row["peak_rss_sampled_mib"] or 0, row["peak_rss_reported_mib"] or 0)
        entry["peak_rss_mib"] = max(entry["peak_rss_mib"], peak)
    for number, name in names.items():
        own = [t for t in tasks if int(t["stage"]) == number]
        if own:
            span = max(parse_time(t["completed_at"]) for t in own) - min(parse_time(t["started_at"]) for t in own)
            stages.setdefault(f"{number} {name}", {})["span_seconds"] = round(span, 2)
    largest = max(rows, key=lambda r: r["peak_rss_sampled_mib"] or 0)
    largest_series = {"task": largest["task"], "rss_mib_per_second": _per_second(largest["_series"])}
    for row in rows:
        del row["_series"], row["span"]
    return {
        "job_id": submitted["job_id"],
        "max_parallel_tasks": max_parallel_tasks or "unbounded",
        "seconds": round(seconds, 2),
        "features_per_s": round(features / seconds),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "stages": stages,
        "largest_task_rss": largest_series,
        "tasks": rows,
        "result": {k: v for k, v in (job.get("result") or {}).items() if k in ("tables", "rows", "parts", "output")},
    }


def run_pair(
    host: common.HostProcess, sampler: ProcessRssSampler, features: int, max_parallel_tasks: int, timeout: float
) -> dict[str, Any]:
    """stage_vector (default options) into ``ours.parcels_p<n>``, then export_geoparquet of it."""
    table = f"parcels_p{max_parallel_tasks}"  # a new table per mode: the option is not part of the job id
    common.log(f"stage_vector → ours.{table}, max_parallel_tasks {max_parallel_tasks or 'unbounded'}")
    staged = run_job(
        host,
        sampler,
        "stage_vector",
        {"blob_name": "bench/parcels.gpkg", "table": table},
        features,
        timeout,
        max_parallel_tasks,
    )
    common.log(f"export_geoparquet of ours.{table}")
    params = {"table": table, "source_schema": "ours", "blob_name": f"bench/{table}.parquet"}
    exported = run_job(host, sampler, "export_geoparquet", params, features, timeout, max_parallel_tasks)
    return {
        "max_parallel_tasks": max_parallel_tasks or "unbounded",
        "stage_vector": staged,
        "export_geoparquet": exported,
    }


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"workers": args.workers, "machine_before": measure.background_cpu()}
    source, features = ensure_source(args.work_dir, args.min_bytes, args.batch)
    report.update(features=features, source_bytes=source.stat().st_size, loadavg_after_generate=_loadavg())
    common.log(f"input: {features} polygons, {source.stat().st_size / GIB:.2f} GiB GeoPackage")
    try:
        with common.running_stack(work / "stack", db_prefix="geoetl_vecmem", azurite_in_memory=False) as stack:
            with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public")
            storage = BlobStorage(stack.storage_connection_string)
            storage.ensure_container("bronze")
            storage.ensure_container("silver")
            started = time.perf_counter()
            storage.upload_file("bronze", "bench/parcels.gpkg", source, content_type="application/geopackage+sqlite3")
            report["upload_seconds"] = round(time.perf_counter() - started, 1)
            settings = stack.app_settings(VECTOR_SCHEMA="ours", LOG_LEVEL="WARNING")
            log_file = common.OUT_DIR / f"vector-memory-host-{measure.utc_stamp()}.log"
            with (
                common.running_host(stack, workers=args.workers, log_file=log_file, settings=settings) as host,
                ProcessRssSampler(host) as sampler,
            ):
                report["runs"] = [run_pair(host, sampler, features, n, args.timeout) for n in args.max_parallel_tasks]
    finally:
        if args.delete_source:
            source.unlink(missing_ok=True)
    for run in report["runs"]:
        peaks = [
            max(t["peak_rss_sampled_mib"] or 0, t["peak_rss_reported_mib"] or 0)
            for job in JOBS
            for t in run[job]["tasks"]
        ]
        run["peak_rss_per_task_mib"] = max(peaks)
        run["within_limit"] = run["peak_rss_per_task_mib"] <= RSS_LIMIT // MIB
    report["machine_after"] = measure.background_cpu()
    return report


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\n{report['features']} polygons, {report['source_bytes'] / GIB:.2f} GiB GeoPackage, "
        f"{report['workers']} workers; upload {report['upload_seconds']} s"
    )
    for pair in report["runs"]:
        print(f"  max_parallel_tasks {pair['max_parallel_tasks']}:")
        for job in JOBS:
            run = pair[job]
            print(
                f"  {job:<18} {run['seconds']:8.1f} s  {run['features_per_s']:8d} features/s  "
                f"(load average {run['loadavg_before']} → {run['loadavg_after']})"
            )
            for stage, entry in run["stages"].items():
                print(f"    stage {stage:<10} {entry}")
            for task in run["tasks"]:
                print(
                    f"      {task['task']:<14} {task['seconds']:7.1f} s  peak {task['peak_rss_sampled_mib']} MiB "
                    f"sampled / {task['peak_rss_reported_mib']} reported (start {task['rss_at_start_mib']}; "
                    f"{task['sampled_from']}; {task['beside_in_same_worker']} beside it in its worker)"
                )
            print(f"    largest task's RSS per second (MiB): {run['largest_task_rss']}")
        verdict = "met" if pair["within_limit"] else "NOT met"
        print(f"  peak RSS per task: {pair['peak_rss_per_task_mib']} MiB (limit {RSS_LIMIT // MIB} MiB: {verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-bytes", type=int, default=2 * GIB, help="size of the generated GeoPackage")
    parser.add_argument("--batch", type=int, default=100_000, help="features per appended batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5400.0, help="seconds per job")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "geoetl-vecmem", help="cache + scratch"
    )
    parser.add_argument(
        "--max-parallel-tasks",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[1, 0],
        help="one job pair per value, comma-separated; 1: one task at a time (its RSS is its own), 0: unbounded",
    )
    parser.add_argument("--delete-source", action="store_true", help="remove the cached GeoPackage at the end")
    args = parser.parse_args(argv)
    common.sigterm_as_keyboard_interrupt()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    try:
        report = benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = measure.write_report("vector-memory", report)
    print_report(report)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
