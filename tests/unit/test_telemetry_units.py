"""Telemetry pieces that need no exporter: off by default, the log job fields, the gauges' cache.
(The exporter itself is tested end to end in tests/integration/test_telemetry.py, in a subprocess:
OpenTelemetry's global providers can be set once per process, and this one keeps them unset.)"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from schemas.settings import Settings
from services.telemetry import metrics
from services.telemetry.backlog import BacklogProbe, CachedReading, QueueReading, StoreReading
from services.telemetry.setup import TelemetryOptions, configure_telemetry, telemetry_configured
from services.telemetry.spans import JobFieldsFilter, annotate, invocation_trace, job_fields, job_span
from tests.support.host import PROJECT_ROOT


def test_the_connection_string_setting_is_read_and_empty_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=abc")
    settings = Settings(AzureWebJobsStorage="UseDevelopmentStorage=true")
    assert settings.applicationinsights_connection_string.get_secret_value() == "InstrumentationKey=abc"
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING")
    settings = Settings(AzureWebJobsStorage="UseDevelopmentStorage=true")
    assert not TelemetryOptions(settings.applicationinsights_connection_string.get_secret_value()).enabled
    assert configure_telemetry(TelemetryOptions("  ")) is False
    assert telemetry_configured() is False


def test_importing_the_app_without_a_connection_string_starts_nothing() -> None:
    """No provider, no exporter thread, not even the distro imported."""
    script = (
        "import threading, sys, function_app\n"
        "from opentelemetry import trace, metrics\n"
        "print(type(trace.get_tracer_provider()).__name__, type(metrics.get_meter_provider()).__name__,"
        " sorted(t.name for t in threading.enumerate()),"
        " any(m.startswith('azure.monitor') for m in sys.modules))\n"
    )
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "ProxyTracerProvider _ProxyMeterProvider ['MainThread'] False", out


def record(message: str = "x", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_log_records_inside_a_job_span_get_its_job_fields_and_keep_their_own() -> None:
    flt = JobFieldsFilter()
    outside = record()
    assert flt.filter(outside) and not hasattr(outside, "job_id")
    with job_span("job.create_stage", {"job_id": "j1", "stage": 2, "messaging.message.id": "m"}):
        annotate(job_type="hello_world", attempt=None)
        with job_span("hello_world.greet", {"task_id": "j1-s2-a", "attempt": 1}):
            inner = record()
            own = record(job_id="other", task_id="t-own")
            assert flt.filter(inner) and flt.filter(own)
            assert job_fields() == {
                "job_id": "j1",
                "stage": 2,
                "job_type": "hello_world",
                "task_id": "j1-s2-a",
                "attempt": 1,
            }
        after = record()
        flt.filter(after)
    fields = ("job_id", "task_id", "job_type", "stage", "attempt")
    assert [getattr(inner, f) for f in fields] == ["j1", "j1-s2-a", "hello_world", 2, 1]
    assert (vars(own)["job_id"], vars(own)["task_id"]) == ("other", "t-own")
    assert vars(after)["job_id"] == "j1" and vars(after)["job_type"] == "hello_world"
    assert "task_id" not in vars(after)
    assert job_fields() == {}


def test_spans_and_metrics_are_no_ops_without_a_provider() -> None:
    with job_span("x", {"job_id": "j"}) as span:
        assert not span.is_recording()
    metrics.task_finished("hello_world", 1, "completed", None)
    metrics.task_duration("hello_world", 1, "completed", 0.1)
    metrics.circuit_state_changed("postgres", "open")


def test_invocation_trace_reads_the_functions_context() -> None:
    class Trace:
        trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        trace_state = ""

    class Context:
        trace_context = Trace()

    assert invocation_trace(Context()) == (Trace.trace_parent, None)
    assert invocation_trace(None) == (None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_gauge_reading_is_cached_for_its_period_and_a_failure_keeps_the_last_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, calls, fail = Clock(), [], [False]

    def read() -> int:
        calls.append(clock.now)
        if fail[0]:
            raise ConnectionError("storage down")
        return len(calls)

    reading = CachedReading("queue depths", read, 30.0, clock)
    assert reading.get() == 1 and reading.get() == 1 and calls == [0.0]
    clock.now = 31.0
    assert reading.get() == 2
    fail[0], clock.now = True, 62.0
    with caplog.at_level(logging.WARNING):
        assert reading.get() == 2 and reading.get() == 2  # last good value; one attempt per period
    assert calls == [0.0, 31.0, 62.0]
    assert [r.getMessage() for r in caplog.records] == [
        "telemetry: reading queue depths failed: ConnectionError: storage down"
    ]


def test_a_failing_backlog_source_never_raises_into_the_exporter() -> None:
    def broken() -> list[QueueReading]:
        raise RuntimeError("no queue service")

    def store() -> StoreReading:
        raise OSError("no database")

    probe = BacklogProbe(broken, store)
    assert probe.queues() == [] and probe.store() is None
