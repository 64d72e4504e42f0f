"""Short chaos run (bench/chaos.py is the full one): SIGKILL host workers during a job; the
supervisor replaces them; the job completes with every task completed exactly once."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from devstack.postgres import PostgresDatabase
from tests.support.engine import make_settings, sql
from tests.support.host import start_host

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_killing_workers_mid_job_loses_and_duplicates_nothing(
    azurite_connection_string: str, postgres_database: PostgresDatabase, tmp_path
) -> None:
    settings = make_settings(
        azurite_connection_string,
        postgres_database,
        task_lease_seconds=6,
        janitor_schedule="*/2 * * * * *",
        janitor_outbox_grace_seconds=2,
        janitor_lease_grace_seconds=1,
    )
    host = start_host(settings, workers=3, log_path=tmp_path / "host.log", extra_args=["--message-lease-seconds", "4"])
    kills: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        rng = random.Random(7)
        while not stop.wait(rng.uniform(0.8, 1.4)) and len(kills) < 4:
            pids = host.worker_pids()
            if pids:
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass

    try:
        code, body = host.request("POST", "/jobs/hello_world", {"n": 40, "message": "chaos", "sleep_ms": 1500})
        assert code == 202
        thread = threading.Thread(target=killer)
        thread.start()
        started = time.monotonic()
        status = host.wait_for_job(body["job_id"], timeout=150)
        stop.set()
        thread.join()
    finally:
        stop.set()
        assert host.stop() == 0
    job_id = body["job_id"]
    assert len(kills) >= 3, "the chaos actually happened"
    assert status["status"] == "completed", (status, time.monotonic() - started)
    assert len(set(status["result"]["replies"])) == 40
    rows = sql(settings, "SELECT status, count(*) FROM tasks WHERE job_id = %s GROUP BY status", (job_id,))
    assert rows == [("completed", 80)]
    reruns = sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s AND attempts > 1", (job_id,))[0][0]
    print(f"chaos-short: kills={len(kills)} tasks=80 reruns_after_kills={reruns}")
    assert reruns >= 1, "a kill interrupted at least one running task, which then ran again"
    # Stage counters are bumped only by a task's first completion: equal to the task count means
    # no task was completed twice.
    assert sql(
        settings, "SELECT stage, task_count, completed_count FROM stages WHERE job_id = %s ORDER BY stage", (job_id,)
    ) == [
        (1, 40, 40),
        (2, 40, 40),
    ]
