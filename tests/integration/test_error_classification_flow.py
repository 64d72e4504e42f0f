"""Unknown exceptions are not retried; each transient family is (issue 12, item 1) — on real Azurite
queues and a real Postgres database."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from pydantic import BaseModel

from devstack.postgres import PostgresDatabase
from schemas.errors import DatabaseUnavailableError, StorageUnavailableError, TransientTaskError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.registry import JobTypeRegistry
from tests.support.engine import make_container, make_settings, pump_until_terminal, sql

pytestmark = pytest.mark.integration


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status_code, self.reason = status, "test"
        self.headers: dict[str, str] = {}

    def text(self) -> str:
        return ""


def http_500() -> Exception:
    return HttpResponseError(message="status 500", response=FakeResponse(500))  # type: ignore[arg-type]


class CPLE_HttpResponseError(Exception):  # what rasterio raises for a failed /vsiaz/ transfer
    __module__ = "rasterio._err"


# Each raises on the first attempt only.
TRANSIENT_FAMILIES: dict[str, Callable[[], BaseException]] = {
    "transient_task_error": lambda: TransientTaskError("upstream hiccup"),
    "storage_unavailable": lambda: StorageUnavailableError("storage 500"),
    "database_unavailable": lambda: DatabaseUnavailableError("server closed the connection"),
    "connection_reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "timeout": lambda: TimeoutError("read timed out"),
    "network_errno": lambda: OSError(errno.EHOSTUNREACH, "No route to host"),
    "azure_request": lambda: ServiceRequestError("connection aborted"),
    "azure_response": lambda: ServiceResponseError("incomplete read"),
    "http_500": http_500,
    "memory": MemoryError,
    "gdal_curl": lambda: CPLE_HttpResponseError("CURL error: Connection timed out after 10001 milliseconds"),
}
UNKNOWN: dict[str, Callable[[], BaseException]] = {
    "value_error": lambda: ValueError("could not convert string to float: 'n/a'"),
    "key_error": lambda: KeyError("tiles"),
    "type_error": lambda: TypeError("'NoneType' object is not subscriptable\nsecond line"),
}


class ScriptedParams(BaseModel):
    raise_: str
    always: bool = False


def scripted(ctx: TaskContext[ScriptedParams]) -> dict[str, Any]:
    params = ctx.job_parameters
    if params.always or ctx.attempt == 1:
        raise {**TRANSIENT_FAMILIES, **UNKNOWN}[params.raise_]()
    return {"attempt": ctx.attempt}


class ScriptedJob(JobController[ScriptedParams]):
    job_type = "scripted_errors"
    description = "raises the exception its parameters name"
    parameters_model = ScriptedParams
    stages = (StageDefinition("work", scripted),)

    def create_tasks(self, stage: int, params: ScriptedParams, previous_results: StageResults) -> list[TaskSpec]:
        return [TaskSpec("only")]

    def finalize(self, params: ScriptedParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"attempt": outcome.results_by_stage["work"]["only"]["attempt"]}


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, task_max_attempts=3)


@pytest.fixture(scope="module")
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings, JobTypeRegistry([ScriptedJob()]))
    yield c
    c.close()


def run(container: ServiceContainer, body: dict[str, Any]) -> dict[str, Any]:
    job_id = container.job_service.submit("scripted_errors", body).job.job_id
    return pump_until_terminal(container, job_id, timeout=60)


def task_row(settings: Settings, job_id: str) -> tuple[Any, ...]:
    [row] = sql(settings, "SELECT attempts, status, error_category, error FROM tasks WHERE job_id = %s", (job_id,))
    return row


@pytest.mark.parametrize("family", sorted(TRANSIENT_FAMILIES))
def test_each_transient_family_is_retried(container: ServiceContainer, settings: Settings, family: str) -> None:
    status = run(container, {"raise_": family})
    assert status["status"] == "completed", status
    assert status["result"] == {"attempt": 2}
    assert task_row(settings, status["job_id"])[:2] == (2, "completed")


@pytest.mark.parametrize("family", sorted(UNKNOWN))
def test_an_unknown_exception_fails_in_one_attempt_as_an_internal_error(
    container: ServiceContainer, settings: Settings, family: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR", logger="services.engine"):
        status = run(container, {"raise_": family, "always": True})
    assert status["status"] == "failed", status
    attempts, task_status, category, error = task_row(settings, status["job_id"])
    assert (attempts, task_status, category) == (1, "failed", "unclassified")
    expected_type = type(UNKNOWN[family]()).__name__
    assert error.startswith("internal error (unclassified") and f"{expected_type}:" in error
    assert "\n" not in error and "\n" not in status["error"] and expected_type in status["error"]
    assert any(r.exc_info and r.levelname == "ERROR" for r in caplog.records), "logged with its traceback"


def test_a_transient_family_that_keeps_failing_stops_at_the_attempt_limit(
    container: ServiceContainer, settings: Settings
) -> None:
    status = run(container, {"raise_": "connection_reset", "always": True})
    assert status["status"] == "failed"
    attempts, _, category, error = task_row(settings, status["job_id"])
    assert (attempts, category) == (3, "transient") and "ConnectionResetError" in error
