"""Operator endpoints (services/operations, triggers/http_operations) and the geoetl CLI (services/cli)
without a server: input checks, decoding, the SQL catalog, rendering and the CLI's argument handling."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
import typer
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from rich.console import Console
from typer.testing import CliRunner

from repositories.operations_queries import operations_queries
from schemas.errors import ConflictError, InvalidRequestError, StorageUnavailableError, ThrottlingError
from schemas.settings import Settings
from services.cli import main as cli
from services.cli import render
from services.cli.client import ApiClient, ApiError, api_base
from services.operations.queues import QueueState, decode_content, storage_errors
from services.operations.service import (
    Operations,
    OperationsOptions,
    dead_letter_summary,
    parse_dead_letter_id,
    source_queue_of,
)
from triggers import http_operations

OPTIONS = OperationsOptions("jobs-q", "tasks-q", "tasks-high-q")


class Untouchable:
    """A database or queue inspector a call must not reach (its input is refused first)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} used")


def operations() -> Operations:
    return Operations(Untouchable(), Untouchable(), Untouchable(), OPTIONS)  # type: ignore[arg-type]


# --- services/operations ------------------------------------------------------------------------


def test_the_webhook_queue_is_listed_when_configured_and_its_letters_are_not_requeued() -> None:
    options = OperationsOptions("jobs-q", "tasks-q", "tasks-high-q", "hooks-q")
    assert options.roles["hooks-q"] == "webhooks"
    assert options.poison_queues[-1] == "hooks-q-poison"
    ops = Operations(Untouchable(), Untouchable(), Untouchable(), options)  # type: ignore[arg-type]
    letter = {"queue": "hooks-q-poison", "body": '{"delivery_id": 7}'}
    with pytest.raises(ConflictError, match="cannot requeue a webhook message"):
        ops._reparsed(letter)


def test_queue_roles_and_poison_queues() -> None:
    assert OPTIONS.roles == {"jobs-q": "jobs", "tasks-q": "tasks", "tasks-high-q": "tasks_high"}
    assert OPTIONS.poison_queues == ("jobs-q-poison", "tasks-q-poison", "tasks-high-q-poison")
    assert source_queue_of("tasks-q-poison") == "tasks-q" and source_queue_of("tasks-q") == "tasks-q"


@pytest.mark.parametrize("name", ["azure-webjobs-hosts", "jobs-q", "tasks-q-poison-poison", "", "JOBS-Q-POISON"])
def test_only_the_apps_poison_queues_are_accepted(name: str) -> None:
    ops = operations()
    for call in (ops.poison_messages, ops.requeue_poison, ops.purge_poison):
        with pytest.raises(InvalidRequestError) as raised:
            call(name)
        assert raised.value.details == [
            {"field": "queue", "message": "must be one of ['jobs-q-poison', 'tasks-q-poison', 'tasks-high-q-poison']"}
        ]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda ops: ops.dead_letters(limit=0, status=None), "limit"),
        (lambda ops: ops.dead_letters(limit=501, status=None), "limit"),
        (lambda ops: ops.dead_letters(limit=None, status="closed"), "status"),
        (lambda ops: ops.failure_stats(0), "hours"),
        (lambda ops: ops.failure_stats(24 * 30 + 1), "hours"),
        (lambda ops: ops.throughput(0), "minutes"),
        (lambda ops: ops.throughput(24 * 60 + 1), "minutes"),
    ],
)
def test_bad_query_values_name_their_field(call: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        call(operations())
    assert raised.value.details[0]["field"] == field


@pytest.mark.parametrize("raw", ["1", "42", "999999999999999999"])
def test_dead_letter_ids_are_positive_integers(raw: str) -> None:
    assert parse_dead_letter_id(raw) == int(raw)


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5", "", "١٢", "9999999999999999999"])
def test_other_dead_letter_ids_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_dead_letter_id(raw)
    assert raised.value.details[0]["field"] == "id"


def test_dead_letter_summary_has_the_contract_fields() -> None:
    received = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    row = {
        "dead_letter_id": 7,
        "queue": "tasks-q-poison",
        "message_id": "m",
        "dequeue_count": 5,
        "body": "{}",
        "reason": "poisoned",
        "job_id": "j",
        "task_id": "t",
        "received_at": received,
        "requeued_at": None,
    }
    summary = dead_letter_summary(row)
    assert summary["id"] == 7 and summary["created_at"] == "2026-11-29T12:00:00+00:00"
    assert summary["status"] == "open" and summary["requeued_at"] is None
    assert {"id", "queue", "reason", "job_id", "task_id", "created_at", "body"} <= set(summary)
    assert dead_letter_summary({**row, "requeued_at": received})["status"] == "requeued"


def test_message_bodies_are_decoded_for_display() -> None:
    assert decode_content(base64.b64encode(b'{"a": 1}').decode()) == '{"a": 1}'
    assert decode_content("not base64!") == "not base64!"
    assert decode_content(base64.b64encode(b"\xff\xfe").decode()) == base64.b64encode(b"\xff\xfe").decode()
    assert decode_content(None) == ""
    assert len(decode_content("x" * 20_000)) == 10_000


def test_oldest_age_is_measured_from_the_front_message() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert QueueState("q", 0, None).oldest_age_seconds(now) is None
    assert QueueState("q", 2, now - timedelta(seconds=90.5)).oldest_age_seconds(now) == 90.5
    assert QueueState("q", 1, now + timedelta(seconds=3)).oldest_age_seconds(now) == 0.0


def http_error(status: int) -> HttpResponseError:
    error = HttpResponseError(message=f"HTTP {status}")
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (http_error(503), ThrottlingError),
        (http_error(429), ThrottlingError),
        (http_error(500), StorageUnavailableError),
        (http_error(403), StorageUnavailableError),
        (ServiceRequestError("refused"), StorageUnavailableError),
    ],
)
def test_storage_errors_become_retryable_service_errors(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected), storage_errors("peek", "q"):
        raise raised


def test_the_operations_sql_file_names_every_statement() -> None:
    assert set(operations_queries()) == {
        "list_dead_letters",
        "lock_dead_letter",
        "mark_dead_letter_requeued",
        "delete_dead_letter",
        "job_exists",
        "failure_groups",
        "throughput_buckets",
    }


# --- triggers/http_operations -------------------------------------------------------------------


class FakeOperations:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.calls.append((name, args or kwargs))
            return {"called": name}

        return record


def functions() -> tuple[dict[str, Any], FakeOperations]:
    fake = FakeOperations()
    container = SimpleNamespace(
        settings=Settings.model_validate({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}), operations=fake
    )
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(http_operations.create_blueprint(container))  # type: ignore[arg-type]
    return {str(f.get_function_name()): f for f in app.get_functions()}, fake


def test_the_blueprint_declares_every_route_function_key_protected() -> None:
    found, _ = functions()
    routes = {}
    for name, function in found.items():
        trigger = function.get_trigger()
        routes[name] = (trigger.route, tuple(str(m.value if hasattr(m, "value") else m) for m in trigger.methods))
        assert trigger.auth_level in (None, func.AuthLevel.FUNCTION)
    assert routes == {
        "list_queues": ("queues", ("GET",)),
        "list_dead_letters": ("dead-letters", ("GET",)),
        "requeue_dead_letter": ("dead-letters/{id}/requeue", ("POST",)),
        "delete_dead_letter": ("dead-letters/{id}", ("DELETE",)),
        "peek_poison_queue": ("poison/{queue}", ("GET",)),
        "requeue_poison_queue": ("poison/{queue}/requeue", ("POST",)),
        "purge_poison_queue": ("poison/{queue}", ("DELETE",)),
        "failure_stats": ("stats/failures", ("GET",)),
        "throughput_stats": ("stats/throughput", ("GET",)),
    }


def invoke(name: str, method: str, params: dict[str, str] | None = None, route: dict[str, str] | None = None) -> Any:
    found, fake = functions()
    req = func.HttpRequest(method, "http://127.0.0.1/api/x", body=b"", params=params or {}, route_params=route or {})
    response = found[name].get_user_function()(req)
    body = json.loads(response.get_body()) if response.get_body() else None
    return response.status_code, body, fake.calls


def test_the_adapter_decodes_and_delegates() -> None:
    assert invoke("list_dead_letters", "GET", {"limit": "5", "status": "open"}) == (
        200,
        {"called": "dead_letters"},
        [("dead_letters", {"limit": 5, "status": "open"})],
    )
    assert invoke("requeue_dead_letter", "POST", route={"id": "12"})[:2] == (202, {"called": "requeue_dead_letter"})
    code, body, calls = invoke("delete_dead_letter", "DELETE", route={"id": "12"})
    assert (code, body, calls) == (204, None, [("delete_dead_letter", (12,))])
    assert invoke("failure_stats", "GET", {"hours": "6"})[2] == [("failure_stats", (6,))]
    assert invoke("throughput_stats", "GET")[2] == [("throughput", (None,))]


@pytest.mark.parametrize(
    ("name", "params", "route", "field"),
    [
        ("list_dead_letters", {"limit": "many"}, None, "limit"),
        ("requeue_dead_letter", None, {"id": "x"}, "id"),
        ("delete_dead_letter", None, {"id": "0"}, "id"),
        ("failure_stats", {"hours": "1e3"}, None, "hours"),
        ("throughput_stats", {"minutes": "-"}, None, "minutes"),
    ],
)
def test_the_adapter_answers_400_naming_the_field(
    name: str, params: dict[str, str] | None, route: dict[str, str] | None, field: str
) -> None:
    method = "DELETE" if name.startswith("delete") else "POST" if name.startswith("requeue") else "GET"
    code, body, calls = invoke(name, method, params, route)
    assert code == 400 and body["details"][0]["field"] == field and calls == []


# --- services/cli -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=3", ("n", 3)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("flag=true", ("flag", True)),
        ("nothing=null", ("nothing", None)),
        ('opts={"a": [1, 2]}', ("opts", {"a": [1, 2]})),
        ("message=hello world", ("message", "hello world")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        ("id=007", ("id", "007")),
    ],
)
def test_key_value_parameters_are_json_when_valid(text: str, expected: tuple[str, Any]) -> None:
    assert cli.parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", " =x"])
def test_a_parameter_needs_a_key(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        cli.parse_assignment(text)


def test_file_parameters_are_overridden_by_key_values(tmp_path: Path) -> None:
    params = tmp_path / "p.json"
    params.write_text('{"n": 2, "message": "file"}')
    assert cli.load_parameters(["message=cli", "sleep_ms=5"], params) == {"n": 2, "message": "cli", "sleep_ms": 5}
    params.write_text("[1]")
    with pytest.raises(typer.BadParameter):
        cli.load_parameters([], params)


def test_api_base_and_error_text() -> None:
    assert api_base("http://h:7071") == api_base("http://h:7071/api/") == "http://h:7071/api"
    error = ApiError(400, "invalid parameters", [{"field": "n", "message": "too small"}])
    assert str(error) == "HTTP 400: invalid parameters (n: too small)"
    assert str(ApiError(0, "cannot reach x")) == "cannot reach x"


def test_an_unreachable_app_is_exit_code_3() -> None:
    result = CliRunner().invoke(cli.app, ["--url", "http://127.0.0.1:9", "jobs"])
    assert result.exit_code == 3
    with pytest.raises(ApiError) as raised:
        ApiClient("file:///etc").get("/jobs")
    assert "not an http(s) URL" in raised.value.message


def status_doc(state: str, done: int, total: int | None = 3) -> dict[str, Any]:
    stages = [
        {"stage": 1, "name": "greet", "state": state, "task_count": total, "tasks": {"completed": done, "failed": 0}},
        {"stage": 2, "name": "reply", "state": "pending", "task_count": None, "tasks": {}},
    ]
    return {
        "job_id": "j" * 64,
        "job_type": "hello_world",
        "status": state,
        "stage": 1,
        "total_stages": 2,
        "error": None,
        "progress": {"stages": stages, "percent": 50.0, "eta_seconds": 1.0},
    }


class FakeClient:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def job(self, job_id: str) -> dict[str, Any]:
        return self.docs.pop(0) if len(self.docs) > 1 else self.docs[0]


@pytest.mark.parametrize("terminal", [True, False])
def test_watch_follows_until_terminal(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, force_terminal=terminal, width=120))
    docs = [status_doc("processing", 0), status_doc("processing", 0), status_doc("processing", 2)]
    docs.append(status_doc("completed", 3))
    final = cli.watch_job(FakeClient(docs), "j", interval=0.01, quiet=False)  # type: ignore[arg-type]
    assert final["status"] == "completed"
    text = out.getvalue()
    assert "greet" in text
    if not terminal:
        assert len([line for line in text.splitlines() if "| greet" in line]) == 3, "a line per change"


def test_renderings_accept_sparse_documents() -> None:
    console = Console(file=io.StringIO(), width=160)
    console.print(render.job_view(status_doc("failed", 1)))
    console.print(render.jobs_table([{"job_id": "x", "status": "failed", "error": "boom\nsecond line"}]))
    console.print(render.tasks_table("x", [{"stage": 1, "task_key": "k", "status": "failed"}]))
    console.print(render.dead_letters_table([{"id": 1, "status": "open", "reason": "r"}]))
    console.print(render.poison_table("q-poison", [{"message_id": "m", "body": "b"}]))
    console.print(render.health_table(False, {"status": "not ready", "dependencies": {"postgres": {"status": "down"}}}))
    assert render.stage_counts({"tasks": {"completed": 2, "failed": 1, "skipped": 1}, "task_count": 5}) == (4, 1, 5)
    assert render.clip("a\nb" * 100, 10).endswith("…")
