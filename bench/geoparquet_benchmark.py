"""export_geoparquet against geopandas ``to_parquet`` with the same best-practice options.

    python -m bench.geoparquet_benchmark [--features 200000] [--workers 2]

One run, on a private stack (bench/common.py: Azurite on disk, a throwaway database with PostGIS,
the local host with ``--workers`` workers):

1. Writes ``--features`` polygons (bench/vector_benchmark.write_parcels: 12-gons, EPSG:2056, six
   attributes) to a GeoPackage, uploads it and stages it with a stage_vector job → ``ours.parcels``.
2. geopandas: ``read_postgis`` of the table (psycopg, ``ST_AsBinary``), ``hilbert_distance()``
   sort, ``to_parquet(compression="zstd", row_group_size=100_000, write_covering_bbox=True,
   schema_version="1.1.0")`` to a local file; each step timed.
3. An export_geoparquet job of the same table submitted over HTTP, polled to its end (submit →
   completed: plan, read, sort, write, upload to blob storage, STAC Item); each write task's peak RSS
   as reported and as sampled from its worker process.
4. geoparquet-validator on both files (failures, advice levels).

Target (issue 14): geopandas seconds / export_geoparquet seconds ≥ 1.0 (table → file for both), peak
RSS per task ≤ 1 GiB. Prints the figures and writes bench/out/geoparquet-benchmark-<UTC>.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg

from bench import common, measure
from bench.cog_benchmark import job_tasks
from bench.task_memory import ProcessRssSampler, parse_time
from bench.vector_benchmark import write_parcels
from repositories.blob_storage import BlobStorage

MIB = 1024 * 1024
TARGET_RATIO, RSS_LIMIT = 1.0, 1024 * MIB
ROW_GROUP = 100_000


def validate(path: Path) -> dict[str, Any]:
    import geoparquet_validator as gpv

    report = gpv.check(str(path))
    return {
        "failed": gpv.failed(report),
        "advice": {a["topic"]: a["level"] for a in report["advice"]},
        "advice_messages": [a["message"] for a in report["advice"] if a["level"] != "good"],
    }


def run_geopandas(stack: common.Stack, out: Path) -> dict[str, Any]:
    try:
        import geopandas
    except ImportError as exc:
        return {"skipped": f"not installed ({exc.name}): pip install -r requirements-dev.txt"}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with psycopg.connect(stack.conninfo()) as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas: "only supports SQLAlchemy connectable …"
        frame = geopandas.read_postgis(
            "SELECT fid, name, category, area, population, built, active, ST_AsBinary(geom) AS geom FROM ours.parcels",
            conn,
            geom_col="geom",
            crs="EPSG:2056",
        )
    timings["read_postgis"] = time.perf_counter() - started
    mark = time.perf_counter()
    frame = frame.iloc[frame.hilbert_distance().argsort()]
    timings["hilbert_sort"] = time.perf_counter() - mark
    mark = time.perf_counter()
    frame.to_parquet(
        out,
        compression="zstd",
        row_group_size=ROW_GROUP,
        write_covering_bbox=True,
        schema_version="1.1.0",
        index=False,
    )
    timings["to_parquet"] = time.perf_counter() - mark
    return {
        "seconds": time.perf_counter() - started,
        "steps_s": {k: round(v, 3) for k, v in timings.items()},
        "bytes": out.stat().st_size,
        "version": geopandas.__version__,
    }


def submit_and_wait(host: common.HostProcess, job_type: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    submitted = measure.submit_job(host.base_url, job_type, params)
    job = measure.wait_for_job(host.base_url, submitted["job_id"], timeout=timeout, poll_interval=0.1)
    if job["status"] != "completed":
        raise RuntimeError(f"{job_type} job ended {job['status']}: {job.get('error')}")
    return job


def run_export(
    host: common.HostProcess, sampler: ProcessRssSampler, storage: BlobStorage, out: Path, timeout: float
) -> dict[str, Any]:
    started = time.perf_counter()
    params = {"table": "parcels", "schema": "ours", "blob_name": "bench/parcels.parquet", "row_group_size": ROW_GROUP}
    job = submit_and_wait(host, "export_geoparquet", params, timeout)
    elapsed = time.perf_counter() - started
    tasks = job_tasks(host.base_url, job["job_id"])
    stages: dict[int, list[dict[str, Any]]] = {}
    for task in tasks:
        stages.setdefault(int(task["stage"]), []).append(task)
    memory = []
    for task in stages.get(2, []):
        result = task["result"] or {}
        sampled = sampler.peak_between(
            int(result["process_id"]), parse_time(task["started_at"]), parse_time(task["completed_at"])
        )
        memory.append(
            {
                "task": task["task_key"],
                "seconds": result.get("seconds"),
                "read_seconds": result.get("read_seconds"),
                "rows": result.get("rows"),
                "peak_rss_reported_mib": round(result["peak_rss_bytes"] / MIB)
                if result.get("peak_rss_bytes")
                else None,
                "peak_rss_sampled_mib": round(sampled / MIB) if sampled else None,
                "rss_at_task_start_mib": round(result["start_rss_bytes"] / MIB)
                if result.get("start_rss_bytes")
                else None,
            }
        )
    out.write_bytes(storage.download_range("silver", job["result"]["output"]["blob"]))
    spans = {
        f"stage_{n}": round(
            max(parse_time(t["completed_at"]) for t in ts) - min(parse_time(t["started_at"]) for t in ts), 3
        )
        for n, ts in sorted(stages.items())
    }
    ends = [parse_time(job["created_at"])]
    gaps = {}
    for n, ts in sorted(stages.items()):
        gaps[f"before_stage_{n}"] = round(min(parse_time(t["started_at"]) for t in ts) - ends[-1], 3)
        ends.append(max(parse_time(t["completed_at"]) for t in ts))
    gaps["after_last_stage"] = round(parse_time(job["completed_at"]) - ends[-1], 3)
    return {
        "job_id": job["job_id"],
        "seconds": elapsed,
        "stages_s": spans,
        "waits_s": gaps,
        "parts": job["result"]["parts"],
        "rows": job["result"]["rows"],
        "bytes": out.stat().st_size,
        "tasks": memory,
    }


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"features": args.features, "workers": args.workers}
    with common.running_stack(work / "stack", db_prefix="geoetl_gpqbench", azurite_in_memory=False) as stack:
        with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public")
        source = write_parcels(work / "parcels.gpkg", args.features)
        storage = BlobStorage(stack.storage_connection_string)
        storage.ensure_container("bronze")
        storage.ensure_container("silver")
        storage.upload_file("bronze", "bench/parcels.gpkg", source, content_type="application/geopackage+sqlite3")
        settings = stack.app_settings(VECTOR_SCHEMA="ours", LOG_LEVEL="WARNING")
        log_file = common.OUT_DIR / f"geoparquet-benchmark-host-{measure.utc_stamp()}.log"
        with (
            common.running_host(stack, workers=args.workers, log_file=log_file, settings=settings) as host,
            ProcessRssSampler(host) as sampler,
        ):
            common.log(f"staging {args.features} polygons with stage_vector")
            submit_and_wait(host, "stage_vector", {"blob_name": "bench/parcels.gpkg"}, args.timeout)
            measure.wait_until_quiet()
            report["geopandas"] = run_geopandas(stack, work / "geopandas.parquet")
            measure.wait_until_quiet()
            report["export_geoparquet"] = run_export(host, sampler, storage, work / "ours.parquet", args.timeout)
        report["validator"] = {"export_geoparquet": validate(work / "ours.parquet")}
        if "seconds" in report["geopandas"]:
            report["validator"]["geopandas"] = validate(work / "geopandas.parquet")
    ours = report["export_geoparquet"]
    if "seconds" in report["geopandas"]:
        report["ratio_vs_geopandas"] = report["geopandas"]["seconds"] / ours["seconds"]
        report["ratio_vs_to_parquet_only"] = report["geopandas"]["steps_s"]["to_parquet"] / ours["seconds"]
    peaks = [t["peak_rss_sampled_mib"] or t["peak_rss_reported_mib"] or 0 for t in ours["tasks"]]
    report["peak_rss_per_task_mib"] = max(peaks) if peaks else None
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['features']} polygons, {report['workers']} workers")
    gpd = report["geopandas"]
    if "skipped" in gpd:
        print(f"  geopandas          skipped: {gpd['skipped']}")
    else:
        print(f"  geopandas          {gpd['seconds']:7.2f} s  {gpd['steps_s']}  {gpd['bytes'] / 1e6:.1f} MB")
    ours = report["export_geoparquet"]
    print(
        f"  export_geoparquet  {ours['seconds']:7.2f} s  (submit → completed; stages {ours['stages_s']}; "
        f"{ours['parts']} part(s)) {ours['bytes'] / 1e6:.1f} MB"
    )
    print(f"  export_geoparquet waits between stages: {ours['waits_s']}")
    if "ratio_vs_geopandas" in report:
        verdict = "met" if report["ratio_vs_geopandas"] >= TARGET_RATIO else "NOT met"
        ratio = report["ratio_vs_geopandas"]
        print(f"  ratio geopandas / ours (table → file): {ratio:.2f} (target {TARGET_RATIO}: {verdict})")
        print(f"  ratio geopandas to_parquet alone / ours: {report['ratio_vs_to_parquet_only']:.2f}")
    print(f"  peak RSS per write task: {report['peak_rss_per_task_mib']} MiB (limit {RSS_LIMIT // MIB} MiB)")
    starts = [t["rss_at_task_start_mib"] for t in ours["tasks"]]
    print(f"  worker RSS when the write task(s) began: {starts} MiB (the staging job ran in the same workers)")
    for name, result in report["validator"].items():
        print(f"  validator {name}: failed {result['failed']}, advice {result['advice']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temp dir)")
    args = parser.parse_args(argv)
    common.sigterm_as_keyboard_interrupt()
    work = Path(tempfile.mkdtemp(prefix="geoetl-gpqbench-", dir=args.work_dir))
    try:
        report = benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = measure.write_report("geoparquet-benchmark", report)
    print_report(report)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
