"""HTTP adapters (body limits, error table) and the progress/ETA computation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest
from pydantic import ValidationError

from schemas.errors import (
    DatabaseUnavailableError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RepositoryError,
)
from schemas.jobs import JobRecord, JobStatus, StageRecord
from schemas.settings import Settings
from services.engine.job_progress import compute_progress
from services.engine.job_service import decode_cursor, encode_cursor
from triggers.http_jobs import optional_int, read_json_body, status_url
from triggers.http_responses import error_response, status_code_for

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def request(
    body: bytes = b"", params: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> func.HttpRequest:
    return func.HttpRequest(
        "POST", "http://127.0.0.1:7071/api/jobs/hello_world", body=body, params=params or {}, headers=headers or {}
    )


def test_error_table_maps_each_type_once() -> None:
    assert status_code_for(InvalidRequestError("x")) == 400
    assert status_code_for(NotFoundError("x")) == 404
    assert status_code_for(PayloadTooLargeError("x")) == 413
    assert status_code_for(DatabaseUnavailableError("x")) == 503
    assert status_code_for(RepositoryError("x")) == 500
    assert status_code_for(KeyError("x")) == 500


def test_error_response_carries_field_details_and_hides_internals() -> None:
    resp = error_response(InvalidRequestError("invalid parameters", details=[{"field": "n", "message": "too big"}]))
    assert resp.status_code == 400 and json.loads(resp.get_body())["details"][0]["field"] == "n"
    internal = error_response(RepositoryError("password=secret in SQL"))
    assert internal.status_code == 500 and b"secret" not in internal.get_body()
    unavailable = error_response(DatabaseUnavailableError("down"))
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "5"


def test_read_json_body_limits_and_errors() -> None:
    assert read_json_body(request(b""), 1024) == {}
    assert read_json_body(request(b'{"n": 5}'), 1024) == {"n": 5}
    with pytest.raises(InvalidRequestError) as bad:
        read_json_body(request(b'{"n": 5'), 1024)
    assert bad.value.details[0]["field"] == "body"
    with pytest.raises(PayloadTooLargeError):
        read_json_body(request(b"x" * 2048), 1024)
    with pytest.raises(PayloadTooLargeError):
        read_json_body(request(b"{}", headers={"Content-Length": "999999"}), 1024)


def test_query_helpers() -> None:
    assert optional_int(request(params={"limit": "7"}), "limit") == 7
    assert optional_int(request(), "limit") is None
    with pytest.raises(InvalidRequestError):
        optional_int(request(params={"limit": "x"}), "limit")
    assert status_url(request(), "f" * 64) == "http://127.0.0.1:7071/api/jobs/" + "f" * 64


def test_cursor_round_trip_and_rejection() -> None:
    cursor = encode_cursor({"task_id": "abc"})
    assert decode_cursor(cursor, ("task_id",)) == {"task_id": "abc"}
    with pytest.raises(InvalidRequestError):
        decode_cursor("not-a-cursor!", ("task_id",))
    with pytest.raises(InvalidRequestError):
        decode_cursor(cursor, ("created_at", "job_id"))


def job(status: JobStatus, stage: int = 1) -> JobRecord:
    return JobRecord("a" * 64, "hello_world", {}, status, stage, 2, None, None, NOW, NOW, NOW, None)


def stage(number: int, task_count: int, status: str, done: int) -> StageRecord:
    return StageRecord("a" * 64, number, f"s{number}", status, task_count, done, 0, 0, NOW, None)


def test_progress_counts_percent_and_eta() -> None:
    counts = [
        {"stage": 1, "status": "completed", "n": 30, "avg_seconds": 0.5},
        {"stage": 1, "status": "queued", "n": 10, "avg_seconds": None},
    ]
    progress = compute_progress(
        job(JobStatus.PROCESSING),
        ["greet", "reply"],
        [stage(1, 40, "processing", 30)],
        counts,
        first_started_at=NOW - timedelta(seconds=10),
        now=NOW,
    )
    first, second = progress["stages"]
    assert first["tasks"]["completed"] == 30 and first["tasks"]["queued"] == 10 and first["state"] == "processing"
    assert second["state"] == "pending" and second["task_count"] is None
    assert progress["percent"] == 37.5  # (30/40) of stage 1 out of 2 stages
    assert progress["eta_seconds"] == pytest.approx(10 / 3.0, abs=0.1)  # 10 left at 3 tasks/s


def test_progress_carries_the_job_types_counters_per_stage_only_when_it_declares_them() -> None:
    counted = compute_progress(
        job(JobStatus.PROCESSING),
        ["greet", "reply"],
        [stage(1, 4, "processing", 2)],
        [],
        None,
        NOW,
        counters={1: {"files": 60, "failed": 2}},
    )
    assert [s["counters"] for s in counted["stages"]] == [{"files": 60, "failed": 2}, {}]
    plain = compute_progress(job(JobStatus.PROCESSING), ["greet", "reply"], [], [], None, NOW)
    assert all("counters" not in s for s in plain["stages"])


def test_progress_of_new_and_finished_jobs() -> None:
    fresh = compute_progress(job(JobStatus.QUEUED), ["greet", "reply"], [], [], None, NOW)
    assert fresh["percent"] == 0.0 and fresh["eta_seconds"] is None
    done = compute_progress(job(JobStatus.COMPLETED, 2), ["greet", "reply"], [], [], None, NOW)
    assert done["percent"] == 100.0 and done["eta_seconds"] == 0.0


def test_settings_defaults_and_validation() -> None:
    s = Settings.model_validate({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert (s.job_queue, s.task_queue) == ("geospatial-jobs", "geospatial-tasks")
    assert "dbname=geoetl" in s.postgres_conninfo()
    for bad in ({"job_queue": "Bad_Name"}, {"task_queue": "a--b"}, {"postgres_schema": "x;drop"}):
        with pytest.raises(ValidationError):
            Settings.model_validate({"AzureWebJobsStorage": "x", **bad})


def test_local_settings_example_lists_every_setting_and_nothing_else() -> None:
    import json
    from pathlib import Path

    from schemas.settings import IDENTITY_STORAGE_SETTINGS, setting_env_names

    values = json.loads((Path(__file__).parents[2] / "local.settings.example.json").read_text())["Values"]
    host_only = {
        "FUNCTIONS_WORKER_RUNTIME",
        "AzureWebJobsFeatureFlags",
        "LOCAL_HOST_REQUIRE_FUNCTION_KEY",
        "LOCAL_HOST_FUNCTION_KEY",
    }
    declared = {env for name, env in setting_env_names().items() if name not in IDENTITY_STORAGE_SETTINGS}
    assert set(values) - host_only == declared
    Settings.model_validate(values)  # and the example values are valid
