"""End to end: `python -m local_host start --workers 2` running tests/fixtures/sample_app against Azurite.

One supervisor serves the whole module (start-up is the slow part); the destructive tests (SIGKILL a
worker, SIGTERM the supervisor) run last, in file order.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from devstack.azurite import AzuriteProcess, free_port

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_APP = PROJECT_ROOT / "tests" / "fixtures" / "sample_app"
FUNCTION_KEY = "test-function-key"
MAX_DEQUEUE_COUNT = 3  # sample_app/host.json
LEASE_SECONDS = 3


def encode(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


@dataclass
class Results:
    """Everything the sample app reported on its results queue so far."""

    client: QueueClient
    records: list[dict[str, Any]] = field(default_factory=list)

    def collect(self) -> list[dict[str, Any]]:
        while True:
            batch = list(self.client.receive_messages(messages_per_page=32, max_messages=32))
            if not batch:
                return self.records
            for message in batch:
                self.records.append(json.loads(base64.b64decode(message.content)))
                self.client.delete_message(message)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.collect()):
                return self.records
            time.sleep(0.2)
        raise AssertionError(f"timed out; records so far: {self.records}")

    def of(self, kind: str, token: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.collect() if r["kind"] == kind and (token is None or r.get("token") == token)]


@dataclass
class RunningHost:
    process: subprocess.Popen[bytes]
    port: int
    state_file: Path
    log_file: Path
    queues: dict[str, str]
    connection_string: str
    results: Results

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.connection_string, name)

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def get(self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


def wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"host exited with {process.returncode}:\n{path.read_text(errors='replace')}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen within {timeout}s:\n{path.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def host(azurite: AzuriteProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    folder = tmp_path_factory.mktemp("local_host")
    suffix = secrets.token_hex(3)
    queues = {
        "SAMPLE_WORK_QUEUE": f"lh-work-{suffix}",
        "SAMPLE_FAIL_QUEUE": f"lh-fail-{suffix}",
        "SAMPLE_RESULTS_QUEUE": f"lh-results-{suffix}",
    }
    for queue_name in queues.values():  # the host's queue listeners, like Azure's, never create their queue
        with contextlib.suppress(ResourceExistsError):
            QueueClient.from_connection_string(azurite.connection_string, queue_name).create_queue()
    results_client = QueueClient.from_connection_string(azurite.connection_string, queues["SAMPLE_RESULTS_QUEUE"])
    settings = folder / "local.settings.json"
    settings.write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                # The environment wins: this bogus connection string must not be used.
                "Values": {"SAMPLE_GREETING": "from-settings", "AzureWebJobsStorage": "bogus"},
            }
        )
    )
    environment = {
        **os.environ,
        **queues,
        "AzureWebJobsStorage": azurite.connection_string,
        "SAMPLE_TICK_SCHEDULE": "*/2 * * * * *",
        "LOCAL_HOST_REQUIRE_FUNCTION_KEY": "1",
        "LOCAL_HOST_FUNCTION_KEY": FUNCTION_KEY,
    }
    environment.pop("SAMPLE_GREETING", None)
    port = free_port()
    state_file = folder / "state.json"
    log_file = folder / "host.log"
    command = [
        sys.executable, "-m", "local_host", "start",
        "--app-dir", str(SAMPLE_APP),
        "--workers", "2",
        "--port", str(port),
        "--settings", str(settings),
        "--state-file", str(state_file),
        "--message-lease-seconds", str(LEASE_SECONDS),
        "--grace-seconds", "10",
    ]  # fmt: skip
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    running = RunningHost(
        process, port, state_file, log_file, queues, azurite.connection_string, Results(results_client)
    )
    try:
        wait_for_line(log_file, "Host started: 2 workers, http://127.0.0.1:", process, timeout=60)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_state_file_lists_the_workers(host: RunningHost) -> None:
    state = host.state()
    assert state["supervisor_pid"] == host.process.pid
    assert state["port"] == host.port
    assert [w["index"] for w in state["workers"]] == [0, 1]
    assert all(isinstance(w["pid"], int) and w["started_at"] for w in state["workers"])


def test_http_round_trip_with_route_params_query_and_settings(host: RunningHost) -> None:
    request = urllib.request.Request(
        f"{host.base_url}/items/42/bob?x=1&x=2&y=z", method="POST", data=b"hello", headers={"x-sample": "hi"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        payload = json.loads(response.read())
    assert payload["method"] == "POST"
    assert payload["url"] == f"{host.base_url}/items/42/bob?x=1&x=2&y=z"
    assert payload["route_params"] == {"item_id": "42", "name": "bob"}
    assert payload["params"] == {"x": "1", "y": "z"}
    assert payload["body"] == "hello" and payload["header"] == "hi"
    assert payload["greeting"] == "from-settings"
    status, payload = host.get("/items/7")
    assert status == 200 and payload["route_params"] == {"item_id": "7"}


def test_literal_route_precedence_404_and_405(host: RunningHost) -> None:
    assert host.get("/things/stats") == (200, {"function": "thing_stats"})
    assert host.get("/things/t-1") == (200, {"function": "get_thing", "thing_id": "t-1"})
    assert host.get("/items/not-an-int") == (404, {"error": "not found"})
    assert host.get("/nowhere") == (404, {"error": "not found"})
    assert host.get("/items/1", method="DELETE") == (405, {"error": "method not allowed"})
    assert host.get("/boom") == (500, {"error": "internal server error"})


def test_function_key_when_enabled(host: RunningHost) -> None:
    assert host.get("/secured")[0] == 401
    assert host.get("/secured", headers={"x-functions-key": "wrong"})[0] == 401
    assert host.get("/secured", headers={"x-functions-key": FUNCTION_KEY}) == (200, {"secured": True})
    assert host.get(f"/secured?code={FUNCTION_KEY}") == (200, {"secured": True})
    assert host.get("/ping")[0] == 200  # anonymous


def test_queue_message_processed_exactly_once_and_deleted(host: RunningHost) -> None:
    work = host.queue(host.queues["SAMPLE_WORK_QUEUE"])
    work.send_message(encode({"token": "quick"}))
    # Outlives the visibility lease: only renewal keeps the other worker from getting it too.
    work.send_message(encode({"token": "slow", "sleep": LEASE_SECONDS + 1.5}))
    host.results.wait_for(lambda _: bool(host.results.of("work", "quick")) and bool(host.results.of("work", "slow")))
    time.sleep(LEASE_SECONDS)  # time for a duplicate delivery to show up, if there were one
    for token in ("quick", "slow"):
        records = host.results.of("work", token)
        assert len(records) == 1, records
        assert records[0]["dequeue_count"] == 1
    assert work.get_queue_properties().approximate_message_count == 0


def test_failing_message_goes_to_poison_after_max_dequeue_count(host: RunningHost) -> None:
    fail_queue = host.queues["SAMPLE_FAIL_QUEUE"]
    raw = encode({"token": "doomed"})
    host.queue(fail_queue).send_message(raw)
    poison = host.queue(f"{fail_queue}-poison")
    deadline = time.monotonic() + 30
    poisoned: list[Any] = []
    while time.monotonic() < deadline and not poisoned:
        try:
            poisoned = list(poison.peek_messages(max_messages=32))
        except Exception:  # poison queue not created yet
            poisoned = []
        time.sleep(0.2)
    assert [m.content for m in poisoned] == [raw]
    time.sleep(1.5)  # a fourth invocation would have happened by now
    attempts = host.results.of("fail", "doomed")
    assert sorted(r["dequeue_count"] for r in attempts) == [1, 2, 3]
    assert len({r["id"] for r in attempts}) == 1
    assert host.queue(fail_queue).get_queue_properties().approximate_message_count == 0


def test_two_workers_share_the_port_and_the_queue(host: RunningHost) -> None:
    workers_seen = {host.get("/ping")[1]["worker"] for _ in range(40)}
    assert workers_seen == {"0", "1"}
    work = host.queue(host.queues["SAMPLE_WORK_QUEUE"])
    tokens = [f"spread-{i}" for i in range(16)]
    for token in tokens:
        work.send_message(encode({"token": token, "sleep": 0.5}))
    host.results.wait_for(lambda _: all(host.results.of("work", t) for t in tokens))
    records = [r for r in host.results.of("work") if r["token"] in tokens]
    assert sorted(r["token"] for r in records) == sorted(tokens)
    assert {r["worker"] for r in records} == {"0", "1"}


def test_timer_runs_on_a_single_instance(host: RunningHost) -> None:
    ticks = host.results.wait_for(lambda _: len(host.results.of("tick")) >= 2)
    ticks = host.results.of("tick")
    assert len({t["pid"] for t in ticks}) == 1
    occurrences = [t["last"] for t in ticks]
    assert len(occurrences) == len(set(occurrences))
    assert not any(t["past_due"] for t in ticks)


def test_sigkilled_worker_is_restarted(host: RunningHost) -> None:
    victim = host.state()["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    replacement = None
    while time.monotonic() < deadline:
        current = host.state()["workers"][1]
        if current["pid"] not in (None, victim["pid"]):
            replacement = current
            break
        time.sleep(0.1)
    assert replacement is not None, "worker 1 was not restarted"
    assert replacement["restarts"] == 1
    while time.monotonic() < deadline:  # the replacement serves HTTP on the shared port
        status, payload = host.get("/ping")
        if status == 200 and payload["pid"] == replacement["pid"]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the restarted worker never answered")
    assert "exited unexpectedly" in host.log_file.read_text()


def test_sigterm_drains_in_flight_work_and_exits_zero(host: RunningHost) -> None:
    work = host.queue(host.queues["SAMPLE_WORK_QUEUE"])
    work.send_message(encode({"token": "drain", "sleep": 2, "announce": True}))
    host.results.wait_for(lambda _: bool(host.results.of("started", "drain")))
    host.process.send_signal(signal.SIGTERM)
    assert host.process.wait(timeout=15) == 0
    assert not host.state_file.exists()
    assert len(host.results.of("work", "drain")) == 1  # finished during the grace period
    assert work.get_queue_properties().approximate_message_count == 0
    state_pids = [line for line in host.log_file.read_text().splitlines() if "Host stopped" in line]
    assert state_pids
