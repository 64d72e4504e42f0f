"""A crashed instance does not stall its job for minutes: with the default lease (the task's
heartbeat) and janitor schedule, the tasks a SIGKILLed worker held run again well within a minute,
while a live task, renewing its lease, is never run twice. Through the local host, default settings."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from devstack.postgres import PostgresDatabase
from schemas.settings import Settings
from tests.support.engine import make_settings, sql
from tests.support.host import start_host

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_tasks_of_a_killed_worker_run_again_within_a_minute(
    azurite_connection_string: str, postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    defaults = Settings.model_fields
    settings = make_settings(azurite_connection_string, postgres_database)
    assert settings.task_lease_seconds == defaults["task_lease_seconds"].default == 30
    assert settings.janitor_schedule == defaults["janitor_schedule"].default == "*/10 * * * * *"
    host = start_host(settings, workers=1, log_path=tmp_path / "host.log")
    try:
        code, body = host.request("POST", "/jobs/hello_world", {"n": 2, "message": "heartbeat", "sleep_ms": 40_000})
        assert code == 202
        job_id = body["job_id"]
        deadline = time.monotonic() + 60
        while not sql(settings, "SELECT 1 FROM tasks WHERE job_id = %s AND status = 'processing'", (job_id,)):
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.2)
        # Live for longer than the lease: the heartbeat keeps it from being taken while it runs.
        time.sleep(settings.task_lease_seconds + 5)
        assert sql(settings, "SELECT max(attempts) FROM tasks WHERE job_id = %s", (job_id,)) == [(1,)]
        [victim] = host.worker_pids()
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while not sql(settings, "SELECT 1 FROM tasks WHERE job_id = %s AND attempts = 2", (job_id,)):
            assert time.monotonic() - killed_at < 60, "the killed worker's task was not run again within a minute"
            time.sleep(0.5)
        detected = time.monotonic() - killed_at
    finally:
        host.stop()
    print(f"dead worker detected and its task re-run after {detected:.1f}s")
    assert detected < 60
