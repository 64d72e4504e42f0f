"""Metric instruments (OpenTelemetry API: no-ops until setup.py configured a provider).

Exported to Application Insights as customMetrics, attributes as customDimensions:

| metric | kind | attributes |
|---|---|---|
| geoetl.tasks.completed / .failed / .retried | counter | job_type, stage, error_category (failed/retried) |
| geoetl.task.duration | histogram, s | job_type, stage, outcome |
| geoetl.stage.handoff_latency | histogram, s | job_type, stage (the stage started, or "finalize") |
| geoetl.circuit_breaker.state_changes | counter | circuit, state |
| geoetl.queue.depth, geoetl.queue.oldest_message_age | gauge (messages, s) | queue, poison |
| geoetl.outbox.backlog, geoetl.outbox.oldest_age | gauge (messages, s) | |
| geoetl.dead_letters.open | gauge | |

The gauges are registered by ``observe_backlog`` (function_app.py, only with telemetry on); their
callbacks read a cached snapshot (services/telemetry/backlog.py) and never raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

if TYPE_CHECKING:  # the engine imports this module; backlog.py imports services.operations
    from services.telemetry.backlog import BacklogProbe

METER_NAME = "geoetl"

_meter = metrics.get_meter(METER_NAME)
_completed = _meter.create_counter("geoetl.tasks.completed", unit="{task}", description="Tasks completed")
_failed = _meter.create_counter("geoetl.tasks.failed", unit="{task}", description="Tasks failed (final)")
_retried = _meter.create_counter("geoetl.tasks.retried", unit="{task}", description="Task attempts retried")
_duration = _meter.create_histogram("geoetl.task.duration", unit="s", description="Task handler run time")
_handoff = _meter.create_histogram(
    "geoetl.stage.handoff_latency", unit="s", description="Previous stage closed -> this stage's fan-out (or finalize)"
)
_circuit_changes = _meter.create_counter(
    "geoetl.circuit_breaker.state_changes", unit="{change}", description="Circuit breaker state changes"
)


def task_finished(job_type: str, stage: int, status: str, error_category: str | None) -> None:
    """A task's final outcome was recorded (completed, failed or skipped)."""
    attributes: dict[str, str | int] = {"job_type": job_type, "stage": stage}
    if status == "completed":
        _completed.add(1, attributes)
    elif status == "failed":
        _failed.add(1, {**attributes, "error_category": error_category or "unknown"})


def task_retried(job_type: str, stage: int, error_category: str) -> None:
    _retried.add(1, {"job_type": job_type, "stage": stage, "error_category": error_category})


def task_duration(job_type: str, stage: int, outcome: str, seconds: float) -> None:
    _duration.record(max(0.0, seconds), {"job_type": job_type, "stage": stage, "outcome": outcome})


def stage_handoff(job_type: str, stage: int | str, seconds: float) -> None:
    _handoff.record(max(0.0, seconds), {"job_type": job_type, "stage": stage})


def circuit_state_changed(circuit: str, state: str) -> None:
    _circuit_changes.add(1, {"circuit": circuit, "state": state})


def observe_backlog(probe: BacklogProbe) -> None:
    """Register the queue / outbox / dead-letter gauges, read from ``probe``'s cached snapshot."""

    def queue_depth(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(q.approximate_messages, {"queue": q.name, "poison": q.poison}) for q in probe.queues()]

    def queue_age(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(q.oldest_age_seconds, {"queue": q.name, "poison": q.poison})
            for q in probe.queues()
            if q.oldest_age_seconds is not None
        ]

    def outbox_backlog(options: CallbackOptions) -> Iterable[Observation]:
        store = probe.store()
        return [] if store is None else [Observation(store.outbox_messages)]

    def outbox_age(options: CallbackOptions) -> Iterable[Observation]:
        store = probe.store()
        return [] if store is None else [Observation(store.outbox_oldest_age_seconds)]

    def dead_letters(options: CallbackOptions) -> Iterable[Observation]:
        store = probe.store()
        return [] if store is None else [Observation(store.open_dead_letters)]

    _meter.create_observable_gauge("geoetl.queue.depth", [queue_depth], unit="{message}")
    _meter.create_observable_gauge("geoetl.queue.oldest_message_age", [queue_age], unit="s")
    _meter.create_observable_gauge("geoetl.outbox.backlog", [outbox_backlog], unit="{message}")
    _meter.create_observable_gauge("geoetl.outbox.oldest_age", [outbox_age], unit="s")
    _meter.create_observable_gauge("geoetl.dead_letters.open", [dead_letters], unit="{message}")
