"""Spans of the edge and the engine, through the OpenTelemetry API (a no-op until
services/telemetry/setup.py configured a provider).

Every span about a job carries the same attributes, which Application Insights stores as
customDimensions: ``job_id``, ``job_type``, ``task_id``, ``stage``, ``attempt``, ``task_key`` and,
on failure, ``error_category``. The job fields of the innermost open span are also kept in a
context variable, so the exported log records of that span get them (``JobFieldsFilter``) even
when the code that logs has no job logger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER_NAME = "geoetl"
# Span attributes that are also stamped on log records (as customDimensions).
LOG_FIELDS = ("job_id", "job_type", "task_id", "stage", "attempt")

AttributeValue = str | int | float | bool
_job_fields: ContextVar[dict[str, AttributeValue] | None] = ContextVar("geoetl_job_fields", default=None)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def _clean(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    clean: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        clean[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return clean


def parent_context(traceparent: str | None, tracestate: str | None = None) -> object | None:
    """The context of a W3C ``traceparent`` (the Functions host's invocation, or a client's
    request), to parent the worker's span under it; None when absent."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return extract(carrier)


@contextmanager
def job_span(
    name: str,
    attributes: Mapping[str, object],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Iterator[Span]:
    """A current span with ``attributes`` (None values left out); an exception leaving it marks
    it failed and is recorded. Its job fields (LOG_FIELDS) go on the logs written inside it."""
    attrs = _clean(attributes)
    fields = {**(_job_fields.get() or {}), **{k: v for k, v in attrs.items() if k in LOG_FIELDS}}
    token = _job_fields.set(fields)
    context = parent_context(traceparent, tracestate)
    try:
        with tracer().start_as_current_span(name, context=context, kind=kind, attributes=attrs) as span:  # type: ignore[arg-type]
            yield span
    finally:
        _job_fields.reset(token)


def annotate(**attributes: object) -> None:
    """Add attributes to the current span (and its job fields to the logs written inside it)."""
    attrs = _clean(attributes)
    fields = _job_fields.get()
    if fields is not None:
        fields.update({k: v for k, v in attrs.items() if k in LOG_FIELDS})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attrs)


def mark_failed(category: str, description: str, exc: BaseException | None = None) -> None:
    """The current span's work failed: ``error_category`` and an error status."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("error_category", category)
    span.set_status(Status(StatusCode.ERROR, description[:1024]))
    if exc is not None:
        span.record_exception(exc)


def job_fields() -> dict[str, AttributeValue]:
    """The job fields of the innermost open job span ({} outside any)."""
    return dict(_job_fields.get() or {})


class JobFieldsFilter(logging.Filter):
    """On the exporting handler: a record without ``job_id`` etc. gets them from the enclosing
    job span, so no exported line about a job lacks its job_id. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job_fields.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def invocation_trace(context: object | None) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of a Functions invocation context (``func.Context.trace_context``):
    with the host's telemetry on, the worker's spans become children of the host's invocation."""
    trace_context = getattr(context, "trace_context", None)
    parent = getattr(trace_context, "trace_parent", None)
    state = getattr(trace_context, "trace_state", None)
    return (parent or None, state or None)


def message_span(
    function_name: str,
    *,
    queue: str,
    message_id: str | None,
    dequeue_count: int | None,
    context: object | None = None,
    **job_attributes: object,
) -> AbstractContextManager[Span]:
    """The span of one queue-triggered invocation (a request in Application Insights)."""
    traceparent, tracestate = invocation_trace(context)
    attributes = {
        "messaging.system": "azure_storage_queue",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": message_id,
        "messaging.message.delivery_count": dequeue_count,
        **job_attributes,
    }
    return job_span(function_name, attributes, kind=SpanKind.CONSUMER, traceparent=traceparent, tracestate=tracestate)


@contextmanager
def request_span(
    function_name: str, method: str, path: str, headers: Mapping[str, str], **job_attributes: object
) -> Iterator[Span]:
    """The span of one HTTP-triggered invocation, parented under the caller's ``traceparent``
    header when it sends one. ``path`` without its query string (it may carry a function key)."""
    attributes = {"http.request.method": method, "url.path": path, "http.route": function_name, **job_attributes}
    with job_span(
        f"{method} {function_name}",
        attributes,
        kind=SpanKind.SERVER,
        traceparent=headers.get("traceparent"),
        tracestate=headers.get("tracestate"),
    ) as span:
        yield span


def set_status_code(span: Span, status_code: int) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status_code}"))
