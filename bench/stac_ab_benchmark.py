"""Two side-by-side (alternating) measurements behind issue 15's changes, without the host:

    python -m bench.stac_ab_benchmark [--items 50000] [--rounds 2] [--clients 10] [--requests 30]

1. search: pgstac ``search()`` (dehydrated, limit 10, random bbox and one-month interval, two
   collections of ``--items`` analysed items loaded by ``pypgstac load items``) with the STAC API's
   former per-transaction settings (search_path, pgstac.readonly) against the current ones (also
   no parallel workers, no JIT): p50 / p99 at 1 and ``--clients`` clients.
2. preparation: CPU seconds to prepare 10 000 items for COPY (parse, standalone, format) the former
   way (collector on, pypgstac's ``format_item`` per item) against the current one
   (``item_formatting.preparing_items`` + ``format_items``), with a 200 000-object heap.

Writes bench/out/stac-ab-benchmark-<UTC>.json with the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from bench import common, measure
from bench.stac_api_benchmark import lines, run_pypgstac
from repositories.database import Database
from repositories.pgstac_migrator import apply_pgstac_migrations
from services.stac import pgstac_loader
from services.stac.item_formatting import format_items, preparing_items

FORMER = "SELECT set_config('search_path', 'pgstac, public', true), set_config('pgstac.readonly', 'true', true)"
CURRENT = f"{FORMER}, set_config('max_parallel_workers_per_gather', '0', true), set_config('jit', 'off', true)"
COLLECTIONS = ["ab-0", "ab-1"]


def search_body(rng: random.Random) -> Jsonb:
    x, y, month = rng.uniform(0, 95), rng.uniform(0, 45), rng.randint(1, 11)
    interval = f"2023-{month:02d}-01T00:00:00Z/2023-{month + 1:02d}-01T00:00:00Z"
    body = {"bbox": [x, y, x + 5, y + 5], "datetime": interval, "limit": 10, "collections": COLLECTIONS}
    return Jsonb({**body, "conf": {"nohydrate": True}})


def search_latency(conninfo: str, settings: str, clients: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(conninfo) as conn:
            for n in range(requests + 3):  # the first 3 compile pgstac's functions in this session
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute(settings)
                    conn.execute("SELECT pgstac.search(%s)", (search_body(rng),)).fetchone()
                if n >= 3:
                    with lock:
                        latencies.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "p50_ms": round(measure.percentile(latencies, 50) or 0, 1),
        "p99_ms": round(measure.percentile(latencies, 99) or 0, 1),
        "load_average": os.getloadavg()[0],
    }


def preparation_cpu(db: Database, collection_id: str, rounds: int) -> dict[str, Any]:
    blobs = [b"\n".join(lines(collection_id, 10_000)[i : i + 1000]) for i in range(0, 10_000, 1000)]
    url = f"http://127.0.0.1/silver/{collection_id}/items.ndjson"
    seconds: dict[str, list[float]] = {"former": [], "current": []}
    with pgstac_loader.pgstac_transaction(db) as conn:
        loader = pgstac_loader._loader(conn)
        for _ in range(rounds + 1):
            for way in ("former", "current"):
                heap = [{"n": i} for i in range(200_000)]  # a worker's heap, for the collector to walk
                started = time.process_time()
                batch = pgstac_loader.ItemBatch()
                if way == "former":
                    for blob in blobs:
                        for doc in [orjson.loads(line) for line in blob.splitlines()]:
                            batch.add("items.ndjson", doc, url)
                    [loader.format_item(item) for item in batch.items]
                else:
                    with preparing_items():
                        for blob in blobs:
                            for doc in pgstac_loader.parse_documents("items.ndjson", blob):
                                batch.add("items.ndjson", doc, url)
                        format_items(loader, batch.items)
                seconds[way].append(time.process_time() - started)
                del heap
    return {way: round(statistics.median(values[1:]), 3) for way, values in seconds.items()} | {
        "load_average": os.getloadavg()[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    common.sigterm_as_keyboard_interrupt()
    report: dict[str, Any] = {"items": args.items, "search": [], "load_average_start": os.getloadavg()}
    with (
        tempfile.TemporaryDirectory(prefix="stac-ab-") as tmp,
        common.running_stack(Path(tmp) / "stack", db_prefix="geoetl_stacab") as stack,
    ):
        conninfo = stack.conninfo()
        apply_pgstac_migrations(conninfo)
        for collection_id in COLLECTIONS:
            run_pypgstac(stack, Path(tmp), args.items, collection_id)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("ANALYZE pgstac.items")
        for clients, requests in ((1, args.requests * 2), (args.clients, args.requests)):
            for _ in range(args.rounds):
                for way, settings in (("former", FORMER), ("current", CURRENT)):
                    row = {"clients": clients, "settings": way, **search_latency(conninfo, settings, clients, requests)}
                    report["search"].append(row)
                    common.log(f"search {row}")
        db = Database(conninfo, schema="public", max_size=2)
        try:
            report["preparation_cpu_s_per_10k_items"] = preparation_cpu(db, COLLECTIONS[0], args.rounds * 4)
        finally:
            db.close()
        common.log(f"preparation {report['preparation_cpu_s_per_10k_items']}")
    report["load_average_end"] = os.getloadavg()
    print(measure.write_report("stac-ab-benchmark", report))


if __name__ == "__main__":
    main()
