"""ingest_stac against ``pypgstac load items`` on the same items and database, and the STAC API's
search latency under concurrent clients.

    python -m bench.stac_api_benchmark [--items 50000] [--workers 2] [--clients 10] [--requests 100]

One run, on a private stack (bench/common.py: Azurite, a throwaway database with pgstac migrated,
the local host with ``--workers`` workers, PGSTAC_ENABLED and STAC_API_ANONYMOUS):

1. Generates ``--items`` STAC items (polygons spread over a 100 x 50 degree area, a year of
   datetimes) per collection, as .ndjson: a local file for pypgstac, blobs of ``--items-per-blob``
   items for ingest_stac.
2. ``pypgstac load items <file> --method insert`` into collection ``bench-pypgstac-<run>``: items/s.
3. An ingest_stac job (mode insert, ``--blobs-per-task`` blobs per load task) into
   ``bench-geoetl-<run>``, submitted over HTTP and polled to its end: items/s over submit →
   completed, and over the item load stage alone. Steps 2 and 3 alternate ``--repeat`` times (the
   development machine is shared: medians are compared).
4. ``ANALYZE pgstac.items`` (as autovacuum would soon after the loads), then ``--clients`` threads
   each send ``--requests`` searches (GET and POST /api/stac/search with a random bbox, a datetime
   interval and limit 10, on run 0's collections): latency p50/p95/p99, and CPU ms per request of
   the host's workers, the database's backends and the rest of the machine.

Targets (issue 15): ingest_stac items/s ≥ 0.9 x pypgstac's; search p99 ≤ 100 ms at 10 clients.
Writes bench/out/stac-api-benchmark-<UTC>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from bench import common, measure
from bench.cog_benchmark import job_tasks
from bench.task_memory import parse_time
from repositories.blob_storage import BlobStorage
from repositories.pgstac_migrator import apply_pgstac_migrations

TARGET_RATIO, TARGET_P99_MS = 0.9, 100.0


def collection(collection_id: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "description": "benchmark items",
        "license": "other",
        "extent": {"spatial": {"bbox": [[0, 0, 100, 50]]}, "temporal": {"interval": [["2023-01-01T00:00:00Z", None]]}},
        "links": [],
    }


def item(collection_id: str, index: int, rng: random.Random) -> dict[str, Any]:
    x, y = rng.uniform(0, 99.9), rng.uniform(0, 49.9)
    ring = [[x, y], [x + 0.1, y], [x + 0.1, y + 0.1], [x, y + 0.1], [x, y]]
    day = index % 365
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"item-{index:06d}",
        "collection": collection_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [x, y, x + 0.1, y + 0.1],
        "properties": {
            "datetime": f"2023-{1 + day // 31 % 12:02d}-{1 + day % 28:02d}T{index % 24:02d}:00:00Z",
            "eo:cloud_cover": index % 100,
        },
        "assets": {"data": {"href": f"https://example.com/data/{index}.tif", "type": "image/tiff"}},
        "links": [],
    }


def lines(collection_id: str, count: int) -> list[bytes]:
    rng = random.Random(1)
    return [json.dumps(item(collection_id, i, rng)).encode() for i in range(count)]


def run_pypgstac(stack: common.Stack, work: Path, count: int, collection_id: str) -> dict[str, Any]:
    cli = str(Path(sys.executable).with_name("pypgstac"))
    dsn = stack.conninfo()
    (work / "collection.json").write_text(json.dumps(collection(collection_id)))
    (work / "items.ndjson").write_bytes(b"\n".join(lines(collection_id, count)) + b"\n")
    subprocess.run([cli, "load", "collections", str(work / "collection.json"), "--dsn", dsn], check=True)
    started = time.perf_counter()
    done = subprocess.run(
        [cli, "load", "items", str(work / "items.ndjson"), "--dsn", dsn, "--method", "insert"], check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pypgstac load items exited {done.returncode}")
    return {"seconds": round(seconds, 2), "items_per_second": round(count / seconds)}


def run_ingest(
    host: common.HostProcess, storage: BlobStorage, count: int, per_blob: int, per_task: int, collection_id: str
) -> dict[str, Any]:
    storage.ensure_container("silver")
    docs = lines(collection_id, count)
    storage.upload_bytes(
        "silver",
        f"{collection_id}/collection.json",
        json.dumps(collection(collection_id)).encode(),
        content_type="application/json",
    )
    for start in range(0, count, per_blob):
        data = b"\n".join(docs[start : start + per_blob])
        storage.upload_bytes(
            "silver", f"{collection_id}/items-{start:07d}.ndjson", data, content_type="application/json"
        )
    started = time.perf_counter()
    params = {"prefix": f"{collection_id}/", "mode": "insert", "chunk_size": per_task}
    submitted = measure.submit_job(host.base_url, "ingest_stac", params)
    job = measure.wait_for_job(host.base_url, submitted["job_id"], timeout=1800, poll_interval=0.1)
    seconds = time.perf_counter() - started
    if job["status"] != "completed":
        raise RuntimeError(f"ingest_stac ended {job['status']}: {job.get('error')}")
    tasks = job_tasks(host.base_url, submitted["job_id"])
    loads = [t for t in tasks if t["stage"] == 3]
    t0 = min(parse_time(t["started_at"]) for t in tasks)
    timeline = {
        stage: [
            round(min(parse_time(t["started_at"]) for t in tasks if t["stage"] == n) - t0, 2),
            round(max(parse_time(t["completed_at"]) for t in tasks if t["stage"] == n) - t0, 2),
        ]
        for n, stage in ((1, "list"), (2, "collections"), (3, "items"))
    }
    load_s = max(parse_time(t["completed_at"]) for t in loads) - min(parse_time(t["started_at"]) for t in loads)
    last_task = max(parse_time(t["completed_at"]) for t in tasks)
    return {
        "seconds": round(seconds, 2),
        "items": job["result"]["items"],
        "items_per_second": round(count / seconds),
        "load_stage_seconds": round(load_s, 2),
        "load_stage_items_per_second": round(count / load_s),
        "load_tasks": len(loads),
        "timeline_s": timeline,
        # submit → first task started (the jobs queue's polling, up to maxPollingInterval) and last
        # task done → job completed: the engine's share of the end-to-end time
        "queued_s": round(t0 - parse_time(job["created_at"]), 2),
        "finalize_s": round(parse_time(job["completed_at"]) - last_task, 2),
        "load_tasks_s": sorted(
            [round(parse_time(t["started_at"]) - t0, 2), round(parse_time(t["completed_at"]) - t0, 2)] for t in loads
        ),
    }


def analyze_items(stack: common.Stack) -> None:
    """Statistics on the item partitions, as autovacuum gathers them soon after a load: searched
    before or after autovacuum's ANALYZE, the planner picks other plans (a parallel one, with stats)."""
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.execute("ANALYZE pgstac.items")


def stack_backends(stack: common.Stack) -> list[int]:
    """Postgres backends of the benchmark's database (the host's pools), whose CPU the search costs."""
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def search_latency(base: str, clients: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(requests):
            x, y = rng.uniform(0, 95), rng.uniform(0, 45)
            bbox = [round(x, 3), round(y, 3), round(x + 5, 3), round(y + 5, 3)]
            month = rng.randint(1, 11)
            body = {
                "bbox": bbox,
                "datetime": f"2023-{month:02d}-01T00:00:00Z/2023-{month + 1:02d}-01T00:00:00Z",
                "limit": 10,
                "collections": ["bench-geoetl-0", "bench-pypgstac-0"],
            }
            if n % 2:
                req = urllib.request.Request(f"{base}/search", json.dumps(body).encode(), method="POST")
                req.add_header("Content-Type", "application/json")
            else:
                query = (
                    f"bbox={','.join(map(str, bbox))}&datetime={body['datetime']}&limit=10&collections=bench-geoetl-0"
                )
                req = urllib.request.Request(f"{base}/search?{query}")
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed * 1000)
            except Exception as exc:  # reported, the run goes on
                with lock:
                    errors.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(measure.percentile(latencies, 50) or 0, 1),
        "p95_ms": round(measure.percentile(latencies, 95) or 0, 1),
        "p99_ms": round(measure.percentile(latencies, 99) or 0, 1),
    }


def measure_search(stack: common.Stack, host: common.HostProcess, clients: int, requests: int) -> dict[str, Any]:
    """Search latency on analysed items, with the CPU milliseconds per request of the host's workers,
    of the database's backends and of the rest of the machine (other people's work included)."""
    analyze_items(stack)
    groups = {"host_workers": lambda: common.worker_pids(host), "postgres": lambda: stack_backends(stack)}
    cpu = measure.CpuAccount(groups)
    cpu.start()
    search = search_latency(f"{host.base_url}/api/stac", clients, requests)
    used = cpu.stop()
    count = max(1, search["requests"])
    search["cpu_ms_per_request"] = {name: round(seconds * 1000 / count, 2) for name, seconds in used.items()}
    return search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--items-per-blob", type=int, default=1000)
    parser.add_argument("--blobs-per-task", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    common.sigterm_as_keyboard_interrupt()
    baselines: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stac-bench-") as tmp:
        work = Path(tmp)
        with common.running_stack(work / "stack", db_prefix="geoetl_stacbench") as stack:
            common.log(f"pgstac {apply_pgstac_migrations(stack.conninfo())} migrated")
            settings = stack.app_settings(PGSTAC_ENABLED="true", STAC_API_ANONYMOUS="true", LOG_LEVEL="WARNING")
            log_file = common.OUT_DIR / f"stac-api-benchmark-host-{measure.utc_stamp()}.log"
            with common.running_host(stack, workers=args.workers, log_file=log_file, settings=settings) as host:
                storage = BlobStorage(stack.storage_connection_string)
                for run in range(args.repeat):  # alternating, so both see the same machine load
                    baselines.append(run_pypgstac(stack, work, args.items, f"bench-pypgstac-{run}"))
                    common.log(f"pypgstac load items: {baselines[-1]}")
                    runs.append(
                        run_ingest(
                            host, storage, args.items, args.items_per_blob, args.blobs_per_task, f"bench-geoetl-{run}"
                        )
                    )
                    common.log(f"ingest_stac: {runs[-1]}")
                search = measure_search(stack, host, args.clients, args.requests)
                common.log(f"search: {search}")
    baseline = {"runs": baselines, "items_per_second": statistics.median(b["items_per_second"] for b in baselines)}
    ours = {
        "runs": runs,
        "items_per_second": statistics.median(r["items_per_second"] for r in runs),
        "load_stage_items_per_second": statistics.median(r["load_stage_items_per_second"] for r in runs),
    }
    ratio = ours["items_per_second"] / baseline["items_per_second"]
    report = {
        "items": args.items,
        "workers": args.workers,
        "repeat": args.repeat,
        "pypgstac": baseline,
        "ingest_stac": ours,
        "ratio": round(ratio, 2),
        "ratio_load_stage": round(ours["load_stage_items_per_second"] / baseline["items_per_second"], 2),
        "target_ratio": TARGET_RATIO,
        "search": search,
        "target_p99_ms": TARGET_P99_MS,
        "load_average": os.getloadavg(),
    }
    path = measure.write_report("stac-api-benchmark", report)
    print(json.dumps(report, indent=2))
    print(
        f"ratio {ratio:.2f} (target {TARGET_RATIO}); search p99 {search['p99_ms']} ms (target {TARGET_P99_MS}); {path}"
    )


if __name__ == "__main__":
    main()
