"""Which published messages the work chain may follow in the same invocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.jobs import OutboxMessage
from services.engine.work_chain import next_job_messages, next_task_message

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
JOB, OTHER_JOB = "a" * 64, "b" * 64


def outbox(queue: str, body: dict[str, object], delay: float = 0.0, message_id: int = 1) -> OutboxMessage:
    return OutboxMessage(message_id, queue, body, NOW + timedelta(seconds=delay))


def test_only_undelayed_task_messages_are_run_inline() -> None:
    retry = outbox("tasks", {"task_id": f"{JOB}-s1-retry", "job_id": JOB}, delay=2.0)
    fresh = outbox("tasks_high", {"task_id": f"{JOB}-s1-fresh", "job_id": JOB}, message_id=2)
    assert next_task_message([retry], NOW) is None
    chosen = next_task_message([retry, fresh], NOW)
    assert chosen is not None and chosen.task_id == f"{JOB}-s1-fresh"
    assert next_task_message([retry], NOW + timedelta(seconds=2)) is not None  # once it is due


def test_job_messages_are_followed_unless_deferred() -> None:
    advance = outbox("jobs", {"job_id": JOB, "stage": 2})
    deferred = outbox("jobs", {"job_id": OTHER_JOB, "stage": 1, "deferrals": 1}, delay=30.0, message_id=2)
    task = outbox("tasks", {"task_id": f"{JOB}-s2-item", "job_id": JOB}, message_id=3)
    followed = next_job_messages([advance, deferred, task], NOW)
    assert [(m.job_id, m.stage) for m in followed] == [(JOB, 2)]
