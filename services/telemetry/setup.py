"""Turns Application Insights telemetry on, once per process, from the connection string.

``configure_telemetry`` is called by function_app.py (the edge) with the connection string read
from Settings. Empty string: nothing happens, so the OpenTelemetry API stays a no-op (no provider,
no exporter thread, no socket). Otherwise azure-monitor-opentelemetry sets the global tracer,
meter and logger providers and exports to the connection string's IngestionEndpoint, with:

- the Azure SDK's own spans (azure-core-tracing-opentelemetry: every queue and blob call);
- Postgres spans (opentelemetry-instrumentation-psycopg: every statement of the pool's connections);
- the root logger's records as traces, their ``extra`` fields (job_id, task_id, …) as
  customDimensions, and the job fields of the enclosing job/task span added to any record that
  lacks them (services/telemetry/spans.py), so a line logged by a handler or a library still carries
  its job_id.

OpenTelemetry allows one global provider per process: a second call is a no-op.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state = {"configured": False}

# The distro's defaults we switch off: web frameworks and clients the app does not use, psycopg2 (we
# use psycopg 3, instrumented below), and raw HTTP client spans (the Azure SDK's spans already cover
# every storage call; the HTTP spans under them would duplicate each one).
_DISABLED_INSTRUMENTATIONS = ("django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3", "httpx")
# Loggers that would report every export request of the exporter itself.
_QUIET_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "azure.monitor.opentelemetry.exporter")


@dataclass(frozen=True)
class TelemetryOptions:
    """``connection_string``: APPLICATIONINSIGHTS_CONNECTION_STRING; empty turns telemetry off.
    ``live_metrics``: Live Metrics stream (sent to the connection string's LiveEndpoint)."""

    connection_string: str
    live_metrics: bool = True
    service_name: str = "geoetl"  # the cloud role name runs are grouped by (WEBSITE_SITE_NAME on Azure)

    @property
    def enabled(self) -> bool:
        return bool(self.connection_string.strip())


def telemetry_configured() -> bool:
    return _state["configured"]


def configure_telemetry(options: TelemetryOptions) -> bool:
    """Configure the exporters and instrumentations once; True when telemetry is (now) on."""
    if not options.enabled:
        return False
    with _lock:
        if _state["configured"]:
            return True
        from azure.monitor.opentelemetry import configure_azure_monitor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource

        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        configure_azure_monitor(
            connection_string=options.connection_string,
            logger_name="",  # the root logger: every record of the app, with its extra fields
            enable_live_metrics=options.live_metrics,
            resource=Resource.create({SERVICE_NAME: options.service_name}),
            instrumentation_options={name: {"enabled": False} for name in _DISABLED_INSTRUMENTATIONS},
        )
        PsycopgInstrumentor().instrument(enable_commenter=False)
        _add_job_fields_to_exported_logs()
        _state["configured"] = True
    logger.info("Application Insights telemetry on (traces, logs, metrics)")
    return True


def _add_job_fields_to_exported_logs() -> None:
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    from services.telemetry.spans import JobFieldsFilter

    for handler in logging.getLogger().handlers:
        if isinstance(handler, LoggingHandler) and not any(isinstance(f, JobFieldsFilter) for f in handler.filters):
            handler.addFilter(JobFieldsFilter())
