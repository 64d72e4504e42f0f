"""The ``geoetl`` command line end to end: the installed console script, a subprocess talking HTTP
to the local Functions host, which requires a function key here (the CLI sends ``GEOETL_KEY`` as
``x-functions-key``)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.postgres import PostgresDatabase
from schemas.messages import TaskMessage
from schemas.settings import Settings
from tests.support.engine import make_settings, queue_client, sql
from tests.support.host import PROJECT_ROOT, RunningHost, start_host

pytestmark = pytest.mark.integration

FUNCTION_KEY = "cli-test-key"
ARTIFACTS = PROJECT_ROOT / ".stack" / "artifacts"


@pytest.fixture(scope="module")
def cli_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, task_max_attempts=2)


@pytest.fixture(scope="module")
def host(cli_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running = start_host(
        cli_settings,
        workers=2,
        log_path=tmp_path_factory.mktemp("host") / "host.log",
        extra_env={"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "1", "LOCAL_HOST_FUNCTION_KEY": FUNCTION_KEY},
    )
    yield running
    running.stop()


def geoetl(
    host: RunningHost, *args: str, key: str | None = FUNCTION_KEY, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOETL_")}
    env.update({"GEOETL_URL": f"http://127.0.0.1:{host.port}", "COLUMNS": "200", "NO_COLOR": "1"})
    if key is not None:
        env["GEOETL_KEY"] = key
    script = Path(sys.executable).parent / "geoetl"  # the console script `make deps` installs
    assert script.exists(), f"{script} is missing: run `make deps` (it installs the project editable)"
    return subprocess.run(
        [str(script), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def geoetl_json(host: RunningHost, *args: str) -> Any:
    done = geoetl(host, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def submit(host: RunningHost, *assignments: str) -> str:
    return str(geoetl_json(host, "submit", "hello_world", *assignments)["job_id"])


def test_submit_with_wait_succeeds(host: RunningHost) -> None:
    done = geoetl(host, "submit", "hello_world", "n=3", "message=cli wait", "--wait", "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout and "greet" in done.stdout and "reply" in done.stdout
    assert "3/3" in done.stdout

    result = geoetl_json(host, "submit", "hello_world", "n=2", "message=cli json", "--wait", "--interval", "0.2")
    assert result["status"] == "completed"
    assert len(result["result"]["replies"]) == 2
    assert [s["tasks"]["completed"] for s in result["progress"]["stages"]] == [2, 2]


def test_submit_reads_parameters_from_a_json_file(host: RunningHost, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"n": 1, "message": "from a file"}))
    submitted = geoetl_json(host, "submit", "hello_world", "--json", str(params))
    status = host_status(host, submitted["job_id"])
    assert status["parameters"]["n"] == 1 and status["parameters"]["message"] == "from a file"
    again = geoetl_json(host, "submit", "hello_world", "-f", str(params), "message=from a file")
    assert again["job_id"] == submitted["job_id"] and again["created"] is False


def host_status(host: RunningHost, job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = geoetl_json(host, "status", job_id)
    return result


def test_status_watch_shows_progress_until_the_end(host: RunningHost) -> None:
    job_id = submit(host, "n=4", "sleep_ms=1200", "message=watch me")
    done = geoetl(host, "status", job_id, "--watch", "--interval", "0.3")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "cli-status-watch.txt").write_text(
        f"$ geoetl status {job_id} --watch --interval 0.3   (exit {done.returncode})\n{done.stdout}{done.stderr}"
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "| greet" in line]
    assert len(lines) >= 2, f"progress printed as it changed:\n{done.stdout}"
    assert any("processing" in line for line in lines)
    assert "4/4" in lines[-1] and "completed" in done.stdout
    assert "━" in done.stdout, "progress bars"

    status = geoetl_json(host, "status", job_id)
    assert status["status"] == "completed" and status["progress"]["percent"] == 100.0
    assert [s["name"] for s in status["progress"]["stages"]] == ["greet", "reply"]
    watched = geoetl_json(host, "status", job_id, "--watch")
    assert watched["job_id"] == job_id


def test_a_failing_job_exits_non_zero(host: RunningHost) -> None:
    done = geoetl(host, "submit", "hello_world", "n=2", "fail_ratio=0.5", "message=cli fails", "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stderr and "fails on purpose" in done.stderr
    job_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("job "))
    done = geoetl(host, "status", job_id, "--watch")
    assert done.returncode == 1
    done = geoetl(host, "--json", "status", job_id, "--watch")
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "failed"

    # retry: the failed greeting runs again (and fails again, on purpose)
    done = geoetl(host, "retry", job_id)
    assert done.returncode == 0, done.stderr
    assert "processing" in done.stdout and "stage 1" in done.stdout
    done = geoetl(host, "status", job_id, "--watch", "--interval", "0.2")
    assert done.returncode == 1
    attempts = geoetl_json(host, "tasks", job_id, "--status", "failed")["tasks"][0]["attempts"]
    assert attempts == 2, "the retry reset the attempts and ran the task again"


def test_jobs_and_tasks_list_what_the_api_has(host: RunningHost) -> None:
    job_id = submit(host, "n=3", "message=cli lists")
    geoetl(host, "status", job_id, "--watch", "--interval", "0.2")

    listed = geoetl_json(host, "jobs", "--type", "hello_world", "--limit", "200")
    assert job_id in {j["job_id"] for j in listed["jobs"]}
    assert all(j["job_type"] == "hello_world" for j in listed["jobs"])
    done = geoetl(host, "jobs", "--status", "completed")
    assert done.returncode == 0 and job_id in done.stdout and "completed" in done.stdout

    tasks = geoetl_json(host, "tasks", job_id, "--limit", "2")
    assert len(tasks["tasks"]) == 6, "every page is followed"
    assert {t["task_key"] for t in tasks["tasks"]} == {"item_0000", "item_0001", "item_0002"}
    done = geoetl(host, "tasks", job_id, "--stage", "2")
    assert done.returncode == 0 and "3 tasks of" in done.stdout and "item_0002" in done.stdout
    done = geoetl(host, "jobs", "--status", "bogus")
    assert done.returncode == 3 and "status" in done.stderr


def test_cancel_stops_a_running_job_and_reports_conflicts(host: RunningHost) -> None:
    job_id = submit(host, "n=3", "sleep_ms=3000", "message=cli cancel")
    done = geoetl(host, "cancel", job_id)
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout
    assert host_status(host, job_id)["status"] == "cancelled"
    done = geoetl(host, "status", job_id, "--watch")
    assert done.returncode == 1, "a watch ending cancelled is not a success"

    finished = submit(host, "n=1", "message=cli cancel late")
    geoetl(host, "status", finished, "--watch", "--interval", "0.2")
    done = geoetl(host, "cancel", finished)
    assert done.returncode == 3
    assert "HTTP 409" in done.stderr and "already completed" in done.stderr
    done = geoetl(host, "retry", finished)
    assert done.returncode == 3 and "can be retried" in done.stderr


def test_poison_list_and_requeue(host: RunningHost, cli_settings: Settings) -> None:
    done = geoetl(host, "submit", "hello_world", "n=2", "fail_ratio=0.5", "message=cli poison", "--wait")
    assert done.returncode == 1
    [(job_id,)] = sql(cli_settings, "SELECT job_id FROM jobs WHERE parameters->>'message' = 'cli poison'")
    # As if the host had given up on a task message: the poison trigger records a dead letter.
    poison = queue_client(cli_settings, f"{cli_settings.task_queue}-poison")
    body = TaskMessage(task_id=f"{job_id}-s1-item_0000", job_id=job_id).model_dump_json()
    poison.send_message(base64.b64encode(body.encode()).decode())
    deadline = time.monotonic() + 30
    while not sql(cli_settings, "SELECT dead_letter_id FROM dead_letters WHERE job_id = %s", (job_id,)):
        assert time.monotonic() < deadline, "dead letter recorded"
        time.sleep(0.2)
    [(letter_id,)] = sql(cli_settings, "SELECT dead_letter_id FROM dead_letters WHERE job_id = %s", (job_id,))

    listing = geoetl_json(host, "poison", "list")
    assert letter_id in {d["id"] for d in listing["dead_letters"]}
    assert {q["queue"] for q in listing["poison_queues"]} == {
        f"{q}-poison"
        for q in (
            cli_settings.job_queue,
            cli_settings.task_queue,
            cli_settings.high_priority_task_queue,
            cli_settings.webhook_queue,
        )
    }
    done = geoetl(host, "poison", "list")
    assert done.returncode == 0 and str(letter_id) in done.stdout and "open" in done.stdout
    assert f"{cli_settings.task_queue}-poison" in done.stdout and "live messages" in done.stdout

    done = geoetl(host, "poison", "requeue", str(letter_id))
    assert done.returncode == 0, done.stderr
    assert f"dead letter {letter_id}: requeued (job retried" in done.stdout
    done = geoetl(host, "poison", "requeue", str(letter_id))
    assert done.returncode == 1 and "already requeued" in done.stdout
    done = geoetl(host, "poison", "requeue")
    assert done.returncode == 2, "ids or --all"
    result = geoetl_json(host, "poison", "requeue", "--all")
    assert letter_id not in {r["id"] for r in result["requeued"]}, "only open dead letters"
    assert len(result["poison_queues"]) == 4  # jobs, tasks, tasks_high, webhooks
    listing = geoetl_json(host, "poison", "list", "--status", "requeued")
    assert letter_id in {d["id"] for d in listing["dead_letters"]}

    purged = geoetl_json(host, "poison", "purge", "--yes")
    assert len(purged["poison_queues"]) == 4 and all(p["deleted"] >= 0 for p in purged["poison_queues"])
    done = geoetl(host, "poison", "purge", str(letter_id), "--no-live", "--yes")
    assert done.returncode == 0 and f"dead letter {letter_id}: deleted" in done.stdout


def test_health_and_errors(host: RunningHost) -> None:
    done = geoetl(host, "health")
    assert done.returncode == 0, done.stderr
    assert "ready" in done.stdout and "postgres" in done.stdout and "queue_storage" in done.stdout
    report = geoetl_json(host, "health")
    assert report["status"] == "ready" and report["dependencies"]["postgres"]["status"] == "ok"

    done = geoetl(host, "jobs", key="wrong-key")
    assert done.returncode == 3 and "401" in done.stderr and "function key" in done.stderr
    done = geoetl(host, "submit", "hello_world", "n=0")
    assert done.returncode == 3 and "HTTP 400" in done.stderr and "n:" in done.stderr
    done = geoetl(host, "status", "0" * 64)
    assert done.returncode == 3 and "not found" in done.stderr
    done = geoetl(host, "submit", "hello_world", "novalue")
    assert done.returncode == 2 and "key=value" in done.stderr
