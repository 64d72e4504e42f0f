"""Pure parts of the engine: ids, controllers, fan-out planning, backoff, SQL catalog, migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controllers.hello_world import HelloWorldController, HelloWorldParameters, InjectedFailureError
from controllers.registry import default_registry
from repositories.migrator import discover_migrations
from repositories.sql_catalog import parse_named_queries, queries
from services.engine.contract import JobOutcome, TaskContext, TaskSpec
from services.engine.identifiers import job_id_for, task_id_for
from services.engine.job_orchestrator import build_tasks, error_summary
from services.engine.registry import JobTypeRegistry
from services.engine.retry_policy import backoff_seconds
from services.engine.task_runner import result_problem

HELLO = HelloWorldController()


def context(
    params: HelloWorldParameters, key: str, task_params: dict[str, Any], predecessor: dict[str, Any] | None = None
) -> TaskContext[Any]:
    return TaskContext(
        job_id="a" * 64,
        task_id=task_id_for("a" * 64, 1, key),
        stage=1,
        task_key=key,
        attempt=1,
        parameters=task_params,
        job_parameters=params,
        predecessor_result=predecessor,
        logger=logging.LoggerAdapter(logging.getLogger("test"), {}),
    )


def test_job_id_is_full_sha256_and_ignores_key_order() -> None:
    a = job_id_for("hello_world", {"n": 3, "message": "x"})
    b = job_id_for("hello_world", {"message": "x", "n": 3})
    assert a == b and len(a) == 64 and all(c in "0123456789abcdef" for c in a)
    assert job_id_for("hello_world", {"n": 4, "message": "x"}) != a
    assert job_id_for("other_type", {"n": 3, "message": "x"}) != a


def test_task_id_carries_job_stage_and_key() -> None:
    assert task_id_for("b" * 64, 2, "tile_r0_c3") == "b" * 64 + "-s2-tile_r0_c3"


def test_hello_world_parameters_are_validated() -> None:
    assert HelloWorldParameters().n == 3
    for bad in ({"n": 0}, {"n": 1001}, {"fail_ratio": 1.5}, {"unknown": 1}, {"n": "many"}):
        with pytest.raises(ValidationError):
            HelloWorldParameters.model_validate(bad)


def test_hello_world_fan_out_and_lineage() -> None:
    params = HelloWorldParameters(n=4)
    greet = HELLO.create_tasks(1, params, {})
    assert [t.key for t in greet] == ["item_0000", "item_0001", "item_0002", "item_0003"]
    assert not any(t.depends_on_predecessor for t in greet)
    replies = HELLO.create_tasks(2, params, {"item_0001": {}, "item_0003": {}})
    assert [t.key for t in replies] == ["item_0001", "item_0003"] and all(t.depends_on_predecessor for t in replies)


def test_hello_world_handlers_and_injected_failures() -> None:
    params = HelloWorldParameters(n=10, fail_ratio=0.2, message="hey")
    assert params.failing_greetings == 2
    with pytest.raises(InjectedFailureError):
        HELLO.stage(1).handler(context(params, "item_0001", {"index": 1}))
    greeting = HELLO.stage(1).handler(context(params, "item_0002", {"index": 2}))
    assert greeting == {"index": 2, "greeting": "Hello #2 from geoetl: hey"}
    reply = HELLO.stage(2).handler(context(params, "item_0002", {}, predecessor=greeting))
    assert reply["reply"] == "Reply to 'Hello #2 from geoetl: hey'"
    with pytest.raises(ValueError, match="no greeting"):
        HELLO.stage(2).handler(context(params, "item_0002", {}, predecessor=None))


def test_hello_world_finalizer_orders_replies_and_policy_override() -> None:
    outcome = JobOutcome(
        results_by_stage={"greet": {}, "reply": {"item_0001": {"reply": "b"}, "item_0000": {"reply": "a"}}},
        failed_by_stage={"greet": {"item_0002": "boom"}, "reply": {}},
    )
    assert HELLO.finalize(HelloWorldParameters(n=3), outcome) == {"replies": ["a", "b"]}
    assert outcome.failed_count == 1
    assert error_summary(outcome)["failed_by_stage"] == {"greet": 1}
    assert HELLO.failure_ratio_limit(HelloWorldParameters()) == 0.0
    assert HELLO.failure_ratio_limit(HelloWorldParameters(max_failure_ratio=0.5)) == 0.5


def test_build_tasks_rejects_duplicates_and_broken_lineage() -> None:
    job = "c" * 64
    rows = build_tasks(job, 2, [TaskSpec("k1", depends_on_predecessor=True)], previous_keys={"k1"})
    assert rows[0].predecessor_task_id == f"{job}-s1-k1" and rows[0].task_id == f"{job}-s2-k1"
    with pytest.raises(ValueError, match="duplicate"):
        build_tasks(job, 1, [TaskSpec("k1"), TaskSpec("k1")], previous_keys=set())
    with pytest.raises(ValueError, match="predecessor"):
        build_tasks(job, 2, [TaskSpec("k2", depends_on_predecessor=True)], previous_keys={"k1"})
    with pytest.raises(ValueError, match="must match"):
        TaskSpec("Bad Key")


def test_registry_rejects_duplicate_job_types() -> None:
    assert [c.job_type for c in default_registry().all()] == ["hello_world"]
    with pytest.raises(ValueError, match="twice"):
        JobTypeRegistry([HelloWorldController(), HelloWorldController()])


def test_retry_delay_grows_exponentially_with_jitter_and_cap() -> None:
    assert backoff_seconds(1, 1.0, 60.0, rng=lambda: 1.0) == 1.0
    assert backoff_seconds(3, 1.0, 60.0, rng=lambda: 1.0) == 4.0
    assert backoff_seconds(3, 1.0, 60.0, rng=lambda: 0.0) == 2.0
    assert backoff_seconds(20, 1.0, 60.0, rng=lambda: 1.0) == 60.0


def test_result_problem_detects_unstorable_results() -> None:
    assert result_problem({"ok": [1, 2]}) is None
    assert "expected a JSON object" in (result_problem([1]) or "")
    assert "not JSON" in (result_problem({"x": object()}) or "")


def test_named_query_parsing() -> None:
    parsed = parse_named_queries("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;\n")
    assert parsed == {"a": "SELECT 1;", "b": "SELECT 2;"}
    with pytest.raises(ValueError, match="duplicate"):
        parse_named_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    assert {"claim_task", "finish_task", "insert_job", "list_jobs"} <= set(queries())


def test_migrations_are_numbered_without_gaps(tmp_path: Path) -> None:
    assert next(m.version for m in discover_migrations()) == 1
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_c.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match="without gaps"):
        discover_migrations(tmp_path)
    (tmp_path / "bad.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match="NNNN_name"):
        discover_migrations(tmp_path)
