"""Application Insights telemetry for real: the local host runs function_app with
APPLICATIONINSIGHTS_CONNECTION_STRING pointing at a local ingestion endpoint
(tests/support/ingestion.py); real jobs run on Azurite and Postgres, and the test reads what the
Azure Monitor exporter sent: request and task spans with the job's attributes, logs that carry
job_id, and task metrics. One captured span is written to .stack/artifacts/telemetry-span.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.postgres import PostgresDatabase
from schemas.settings import Settings
from tests.support.engine import make_settings
from tests.support.host import PROJECT_ROOT, RunningHost, start_host
from tests.support.ingestion import IngestionServer, base_data, base_type, ingestion_server, properties

pytestmark = pytest.mark.integration

ARTIFACT = PROJECT_ROOT / ".stack" / "artifacts" / "telemetry-span.json"
# Export quickly, sample everything, send nothing anywhere but the local endpoint.
FAST_EXPORT = {
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_BLRP_SCHEDULE_DELAY": "200",
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    "OTEL_TRACES_SAMPLER": "always_on",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
def ingestion() -> Iterator[IngestionServer]:
    with ingestion_server() as server:
        yield server


@pytest.fixture(scope="module")
def host_settings(
    azurite_connection_string: str, postgres_database: PostgresDatabase, ingestion: IngestionServer
) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        applicationinsights_connection_string=ingestion.connection_string(),
        task_max_attempts=2,
    )


@pytest.fixture(scope="module")
def host(host_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    log_path = tmp_path_factory.mktemp("telemetry-host") / "host.log"
    running = start_host(host_settings, workers=1, log_path=log_path, extra_env=FAST_EXPORT)
    yield running
    running.stop()


def wait_until(found: Callable[[], Any], what: str, ingestion: IngestionServer, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        if time.monotonic() > deadline:
            kinds = sorted({base_type(e) for e in ingestion.envelopes()})
            raise AssertionError(f"{what} not received in {timeout}s; received {len(ingestion.envelopes())} ({kinds})")
        time.sleep(0.5)


def spans_of(ingestion: IngestionServer, job_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in ingestion.envelopes()
        if base_type(e) in ("RequestData", "RemoteDependencyData") and properties(e).get("job_id") == job_id
    ]


def handler_spans(ingestion: IngestionServer, job_id: str, job_type: str) -> list[dict[str, Any]]:
    prefix = f"{job_type}."
    return [e for e in spans_of(ingestion, job_id) if str(base_data(e).get("name", "")).startswith(prefix)]


def messages(ingestion: IngestionServer) -> list[dict[str, Any]]:
    return [e for e in ingestion.envelopes() if base_type(e) == "MessageData"]


def metric_points(ingestion: IngestionServer, name: str) -> list[tuple[float, dict[str, Any]]]:
    points = []
    for e in ingestion.envelopes():
        if base_type(e) != "MetricData":
            continue
        for metric in base_data(e).get("metrics", []):
            if metric.get("name") == name:
                points.append((float(metric.get("value", 0)), properties(e)))
    return points


def test_spans_logs_and_metrics_of_a_job_reach_application_insights(
    host: RunningHost, ingestion: IngestionServer, host_settings: Settings
) -> None:
    code, body = host.request("POST", "/jobs/hello_world", {"n": 2, "message": "telemetry"})
    assert code == 202, body
    job_id = body["job_id"]
    assert host.wait_for_job(job_id, timeout=60)["status"] == "completed"
    # A job with a failing task: retried once (task_max_attempts=2), then failed; the job finishes with errors.
    code, body = host.request("POST", "/jobs/hello_world", {"n": 2, "fail_ratio": 0.5, "max_failure_ratio": 1.0})
    assert code == 202, body
    failing_job = body["job_id"]
    assert host.wait_for_job(failing_job, timeout=60)["status"] == "completed_with_errors"

    # The HTTP request that submitted the job: a request with the job's id and type.
    submit = wait_until(
        lambda: [
            e
            for e in spans_of(ingestion, job_id)
            if base_type(e) == "RequestData" and "submit_job" in base_data(e)["name"]
        ],
        "the submit_job request span",
        ingestion,
    )
    assert properties(submit[0])["job_type"] == "hello_world"
    assert str(base_data(submit[0])["responseCode"]) == "202"

    # One handler span per task (2 greet + 2 reply), each with the job's attributes.
    spans = wait_until(
        lambda: len(handler_spans(ingestion, job_id, "hello_world")) >= 4, "four task handler spans", ingestion
    ) and handler_spans(ingestion, job_id, "hello_world")
    names = sorted(base_data(e)["name"] for e in spans)
    assert names == ["hello_world.greet", "hello_world.greet", "hello_world.reply", "hello_world.reply"]
    task_ids = set()
    for span in spans:
        props = properties(span)
        assert props["job_id"] == job_id and props["job_type"] == "hello_world"
        assert props["task_id"].startswith(f"{job_id}-s{props['stage']}-item_")
        assert props["stage"] in ("1", "2", 1, 2) and str(props["attempt"]) == "1"
        assert base_data(span)["success"] is True
        task_ids.add(props["task_id"])
    assert len(task_ids) == 4

    # The queue-triggered invocations are requests too, with the job's id.
    consumers = [e for e in spans_of(ingestion, job_id) if base_type(e) == "RequestData" and e is not submit[0]]
    assert any("process_" in base_data(e)["name"] for e in consumers), [base_data(e)["name"] for e in consumers]

    # The failing task: a failed handler span per attempt, with its error category.
    # The exporter sends in batches: the second attempt's span may arrive after the first's, so wait for both.
    def failed_spans() -> list[dict[str, Any]]:
        return [e for e in handler_spans(ingestion, failing_job, "hello_world") if base_data(e)["success"] is False]

    wait_until(
        lambda: {str(properties(e)["attempt"]) for e in failed_spans()} >= {"1", "2"},
        "failed handler spans of attempts 1 and 2",
        ingestion,
    )
    failed = failed_spans()
    assert {str(properties(e)["attempt"]) for e in failed} == {"1", "2"}
    assert all(properties(e).get("error_category") for e in failed)

    # The cloud role name is the app's (WEBSITE_SITE_NAME on Azure; "geoetl" here), not the SDK's
    # "unknown_service".
    assert {e["tags"].get("ai.cloud.role") for e in spans} == {"geoetl"}

    # Logs: correlated with the task spans, and every line about a job carries its job_id.
    operations = {e["tags"]["ai.operation.id"] for e in spans}
    wait_until(
        lambda: [m for m in messages(ingestion) if m["tags"].get("ai.operation.id") in operations],
        "logs inside the task spans",
        ingestion,
    )
    about_a_job: list[tuple[str, dict[str, Any]]] = []  # (the job a line is about, the line)
    for message in messages(ingestion):
        text = str(base_data(message).get("message", ""))
        mentioned = [jid for jid in (job_id, failing_job) if jid in text]
        if message["tags"].get("ai.operation.id") in operations:
            mentioned.append(job_id)
        about_a_job.extend((jid, message) for jid in mentioned)
    assert len(about_a_job) >= 4
    lacking = [base_data(m)["message"] for jid, m in about_a_job if properties(m).get("job_id") != jid]
    assert not lacking, lacking
    claimed = [m for m in messages(ingestion) if str(base_data(m)["message"]).startswith("task claimed")]
    assert claimed and all(properties(m).get("task_id") and properties(m).get("job_id") for m in claimed)

    # Metrics: tasks completed by job type, failed and retried with their category.
    def completed_points() -> list[tuple[float, dict[str, Any]]]:
        return [p for p in metric_points(ingestion, "geoetl.tasks.completed") if p[1].get("job_type") == "hello_world"]

    # Metrics are exported on a timer: wait until the four completions have been sent, not just the first.
    wait_until(lambda: sum(value for value, _ in completed_points()) >= 4, "four geoetl.tasks.completed", ingestion)
    assert sum(value for value, _ in completed_points()) >= 4
    failed_points = wait_until(
        lambda: metric_points(ingestion, "geoetl.tasks.failed"), "geoetl.tasks.failed", ingestion
    )
    assert all(props.get("error_category") for _, props in failed_points)
    assert wait_until(lambda: metric_points(ingestion, "geoetl.tasks.retried"), "geoetl.tasks.retried", ingestion)
    assert wait_until(lambda: metric_points(ingestion, "geoetl.task.duration"), "geoetl.task.duration", ingestion)
    assert wait_until(
        lambda: metric_points(ingestion, "geoetl.stage.handoff_latency"), "geoetl.stage.handoff_latency", ingestion
    )
    depths = wait_until(lambda: metric_points(ingestion, "geoetl.queue.depth"), "geoetl.queue.depth", ingestion)
    assert {str(props.get("poison")).lower() for _, props in depths} == {"true", "false"}
    assert {props.get("queue") for _, props in depths} >= {host_settings.job_queue, f"{host_settings.job_queue}-poison"}
    assert wait_until(lambda: metric_points(ingestion, "geoetl.outbox.backlog"), "geoetl.outbox.backlog", ingestion)

    # Postgres and blob/queue calls are dependencies in the same traces.
    dependencies = [e for e in ingestion.envelopes() if base_type(e) == "RemoteDependencyData"]
    assert any(str(base_data(e).get("type", "")).lower() == "postgresql" for e in dependencies), {
        base_data(e).get("type") for e in dependencies
    }

    captured = sorted(spans, key=lambda e: str(base_data(e)["name"]))[0]
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(captured, indent=2, sort_keys=True) + "\n")
    ARTIFACT.with_name("telemetry-envelopes.json").write_text(json.dumps(ingestion.envelopes(), indent=1))
    print(f"\ncaptured span ({ARTIFACT}):\n{json.dumps(captured, indent=2, sort_keys=True)}")
